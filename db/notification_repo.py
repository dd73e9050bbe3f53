"""Notifications: one message, one receipt per recipient (their own read state)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update

from db.alert_models import Notification, NotificationReceipt
from db.engine import Sessions
from db.models import User, utcnow
from db.outbox import Deliveries, Queued, queue
from db.repo import Actor, audit_row
from streams.channels import Channel, ChannelKind


async def create_notification(
    sessions: Sessions,
    *,
    actor: Actor,
    institution: str,
    channel: Channel,
    title: str,
    body: str,
    deliveries: Deliveries[Notification] | None = None,
) -> tuple[Notification, int, list[Queued]]:
    """Store the message, a receipt for each recipient, an audit row and its live
    messages (``deliveries``, the outbox), atomically.

    Recipients: the user of ``user:{u}``, or every user of the institution holding
    the role of ``institution:{i}:role:{r}`` at this moment.
    """
    async with sessions() as session, session.begin():
        who = select(User.id).where(User.institution_id == institution)
        if channel.kind is ChannelKind.USER:
            who = who.where(User.id == channel.key)
        else:
            who = who.where(User.role == channel.key)
        recipients = sorted(await session.scalars(who))
        row = Notification(
            institution_id=institution,
            channel=channel.name,
            sender_id=actor.id or "",
            title=title,
            body=body,
        )
        session.add(row)
        await session.flush()
        session.add_all(NotificationReceipt(notification_id=row.id, user_id=u) for u in recipients)
        detail = {"notificationId": row.id, "recipients": len(recipients)}
        session.add(audit_row(actor, "notify", channel.name, "ok", detail))
        queued = await queue(session, deliveries(row) if deliveries else ())
    return row, len(recipients), queued


async def inbox(
    sessions: Sessions, user_id: str, *, unread_only: bool, last: int
) -> list[tuple[Notification, datetime | None]]:
    """The user's newest ``last`` notifications, newest first, with their read time."""
    query = (
        select(Notification, NotificationReceipt.read_at)
        .join(NotificationReceipt, NotificationReceipt.notification_id == Notification.id)
        .where(NotificationReceipt.user_id == user_id)
        .order_by(Notification.id.desc())
        .limit(last)
    )
    if unread_only:
        query = query.where(NotificationReceipt.read_at.is_(None))
    async with sessions() as session:
        return [(n, read_at) for n, read_at in await session.execute(query)]


async def inbox_page(
    sessions: Sessions, user_id: str, *, unread_only: bool, before: int | None, first: int
) -> tuple[list[tuple[Notification, datetime | None]], int | None]:
    """Up to ``first`` of the user's notifications with ids below ``before``, newest
    first, with their read time, and the id to continue below (None: no older ones).

    Keyset pagination on ``ix_notification_receipts_user_id_notification_id``: a
    page costs the same however deep it is, and notifications arriving while a
    client pages do not shift or repeat the older pages.
    """
    query = (
        select(Notification, NotificationReceipt.read_at)
        .join(NotificationReceipt, NotificationReceipt.notification_id == Notification.id)
        .where(NotificationReceipt.user_id == user_id)
    )
    if before is not None:
        query = query.where(NotificationReceipt.notification_id < before)
    if unread_only:
        query = query.where(NotificationReceipt.read_at.is_(None))
    query = query.order_by(NotificationReceipt.notification_id.desc()).limit(first + 1)
    async with sessions() as session:
        rows = [(n, read_at) for n, read_at in await session.execute(query)]
    if len(rows) > first:
        return rows[:first], rows[first - 1][0].id
    return rows, None


async def received(
    sessions: Sessions, user_id: str, ids: Sequence[int]
) -> list[tuple[Notification, datetime | None]]:
    """The user's own notifications among ``ids``, newest first, with their read
    time; ids of others' notifications (or of none) are left out."""
    query = (
        select(Notification, NotificationReceipt.read_at)
        .join(NotificationReceipt, NotificationReceipt.notification_id == Notification.id)
        .where(
            NotificationReceipt.user_id == user_id,
            NotificationReceipt.notification_id.in_(list(ids)),
        )
        .order_by(NotificationReceipt.notification_id.desc())
    )
    async with sessions() as session:
        return [(n, read_at) for n, read_at in await session.execute(query)]


async def unread_counts(sessions: Sessions, user_ids: Sequence[str]) -> dict[str, int]:
    """How many unread notifications each user has (users with none are left out)."""
    query = (
        select(NotificationReceipt.user_id, func.count())
        .where(
            NotificationReceipt.user_id.in_(list(user_ids)),
            NotificationReceipt.read_at.is_(None),
        )
        .group_by(NotificationReceipt.user_id)
    )
    async with sessions() as session:
        return {user: count for user, count in await session.execute(query)}


async def mark_read(sessions: Sessions, actor: Actor, ids: Sequence[int]) -> int:
    """Mark the caller's receipts read; returns how many were unread (others: ignored)."""
    async with sessions() as session, session.begin():
        done = await session.execute(
            update(NotificationReceipt)
            .where(
                NotificationReceipt.user_id == (actor.id or ""),
                NotificationReceipt.notification_id.in_(list(ids)),
                NotificationReceipt.read_at.is_(None),
            )
            .values(read_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        count: int = done.rowcount  # type: ignore[attr-defined]
        session.add(audit_row(actor, "markRead", f"user:{actor.id}", "ok", {"marked": count}))
    return count
