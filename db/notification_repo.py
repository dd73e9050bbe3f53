"""Notifications: one message, one receipt per recipient (their own read state)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update

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
