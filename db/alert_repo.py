"""Alerts: raise (with recipients and audit in one transaction), acknowledge, resolve,
and read the roll-call. Outcomes the caller must tell apart come back as values, so
the API layer decides how to word them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.alert_models import Alert, AlertRecipient
from db.engine import Sessions
from db.models import User, user_classrooms, user_departments, utcnow
from db.outbox import Deliveries, Queued, queue
from db.repo import Actor, audit_row
from streams.channels import Channel, ChannelKind

NOT_PEOPLE = "service"  # service accounts are integrations, not people to account for
_NOT_TARGETED = {"reason": "the alert does not target you"}
_NOT_ALLOWED = {"reason": "only admins and whoever raised the alert may resolve it"}


class Outcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    NOT_TARGETED = "not_targeted"
    NOT_ALLOWED = "not_allowed"
    ALREADY = "already"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Change:
    outcome: Outcome
    alert: Alert | None = None
    at: datetime | None = None
    queued: Sequence[Queued] = ()  # committed messages about the change, to deliver


@dataclass(frozen=True, slots=True)
class Tally:
    """An acknowledgement just recorded, with the alert's counts as it left them."""

    alert: Alert
    user_id: str
    at: datetime
    acknowledged: int
    pending: int


@dataclass(frozen=True, slots=True)
class RollCallEntry:
    user_id: str
    display_name: str
    role: str
    acknowledged_at: datetime | None


def _members(institution: str, channel: Channel) -> Select[str]:
    """User ids of the people a channel reaches (see docs/presence-alerts.md)."""
    people = select(User.id).where(User.institution_id == institution, User.role != NOT_PEOPLE)
    match channel.kind:
        case ChannelKind.DEPARTMENT:
            return people.join(user_departments, user_departments.c.user_id == User.id).where(
                user_departments.c.department_id == channel.key
            )
        case ChannelKind.CLASSROOM:
            return people.join(user_classrooms, user_classrooms.c.user_id == User.id).where(
                user_classrooms.c.classroom_id == channel.key
            )
        case ChannelKind.ROLE:
            return people.where(User.role == channel.key)
        case ChannelKind.USER:
            return people.where(User.id == channel.key)
        case _:  # institution, alerts: everyone
            return people


async def targeted_users(
    session: AsyncSession, institution: str, targets: Sequence[Channel]
) -> set[str]:
    found: set[str] = set()
    for channel in targets:
        found.update(await session.scalars(_members(institution, channel)))
    return found


async def create_alert(
    sessions: Sessions,
    *,
    actor: Actor,
    institution: str,
    severity: str,
    title: str,
    body: str,
    targets: Sequence[Channel],
    deliveries: Deliveries[Alert] | None = None,
) -> tuple[Alert, int, list[Queued]]:
    """Store the alert, its targeted people, an audit row and the messages that
    announce it (``deliveries``, the outbox) in one transaction.

    No targets means the whole institution.
    """
    reach = list(targets) or [Channel(ChannelKind.INSTITUTION, institution)]
    async with sessions() as session, session.begin():
        people = await targeted_users(session, institution, reach)
        alert = Alert(
            institution_id=institution,
            severity=severity,
            title=title,
            body=body,
            targets=[t.name for t in targets],
            raised_by=actor.id or "",
            raised_by_role=actor.role or "",
        )
        session.add(alert)
        await session.flush()
        session.add_all(AlertRecipient(alert_id=alert.id, user_id=u) for u in sorted(people))
        detail = {"alertId": alert.id, "severity": severity, "recipients": len(people)}
        session.add(
            audit_row(actor, "raiseAlert", f"institution:{institution}:alerts", "ok", detail)
        )
        queued = await queue(session, deliveries(alert) if deliveries else ())
    return alert, len(people), queued


async def get_alert(sessions: Sessions, alert_id: int, institution: str) -> Alert | None:
    """The alert if it exists in ``institution`` (others are reported missing)."""
    async with sessions() as session:
        alert = await session.get(Alert, alert_id)
    return alert if alert is not None and alert.institution_id == institution else None


async def is_recipient(sessions: Sessions, alert_id: int, user_id: str) -> bool:
    async with sessions() as session:
        return await session.get(AlertRecipient, (alert_id, user_id)) is not None


async def acknowledged_at(
    sessions: Sessions, pairs: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], datetime | None]:
    """For (alert id, user id) pairs where the user is targeted: when they
    acknowledged (None: not yet). Pairs of people not targeted are left out."""
    alerts = {alert_id for alert_id, _ in pairs}
    users = {user_id for _, user_id in pairs}
    async with sessions() as session:
        rows = await session.execute(
            select(
                AlertRecipient.alert_id, AlertRecipient.user_id, AlertRecipient.acknowledged_at
            ).where(AlertRecipient.alert_id.in_(alerts), AlertRecipient.user_id.in_(users))
        )
        return {(alert_id, user_id): at for alert_id, user_id, at in rows}


async def acknowledge(
    sessions: Sessions, actor: Actor, alert_id: int, deliveries: Deliveries[Tally] | None = None
) -> Change:
    """Refusals (missing, not targeted) are audited in the same transaction, and so are
    the messages that announce an acknowledgement (``deliveries``, the outbox).

    The alert's row is locked (Postgres) while the acknowledgement is recorded:
    acknowledgements of one alert, and its resolution, take turns, so the counts
    each one announces are exact and grow by one in commit order, and nobody
    acknowledges an alert being resolved."""
    user = actor.id or ""
    target = f"alert:{alert_id}"
    async with sessions() as session, session.begin():
        alert = await session.get(Alert, alert_id, with_for_update=True)
        if alert is None or alert.institution_id != actor.institution:
            session.add(audit_row(actor, "acknowledgeAlert", target, "not_found"))
            return Change(Outcome.NOT_FOUND)
        if alert.resolved_at is not None:
            return Change(Outcome.RESOLVED, alert, alert.resolved_at)
        row = await session.get(AlertRecipient, (alert_id, user))
        if row is None:
            session.add(audit_row(actor, "acknowledgeAlert", target, "denied", _NOT_TARGETED))
            return Change(Outcome.NOT_TARGETED, alert)
        if row.acknowledged_at is not None:
            return Change(Outcome.ALREADY, alert, row.acknowledged_at)
        now = utcnow()
        # Conditional update: of two concurrent acknowledgements only one counts.
        done = await session.execute(
            update(AlertRecipient)
            .where(
                AlertRecipient.alert_id == alert_id,
                AlertRecipient.user_id == user,
                AlertRecipient.acknowledged_at.is_(None),
            )
            .values(acknowledged_at=now)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return Change(Outcome.ALREADY, alert)
        session.add(audit_row(actor, "acknowledgeAlert", target, "ok", {"alertId": alert_id}))
        queued: list[Queued] = []
        if deliveries is not None:
            acknowledged, targeted = (
                await session.execute(
                    select(func.count(AlertRecipient.acknowledged_at), func.count()).where(
                        AlertRecipient.alert_id == alert_id
                    )
                )
            ).one()
            tally = Tally(alert, user, now, acknowledged, targeted - acknowledged)
            queued = await queue(session, deliveries(tally))
    return Change(Outcome.OK, alert, now, queued)


async def resolve(
    sessions: Sessions, actor: Actor, alert_id: int, deliveries: Deliveries[Alert] | None = None
) -> Change:
    """Admins of the institution, or whoever raised it, may resolve an open alert.
    Refusals (missing, not allowed) are audited in the same transaction, and so are
    the messages that announce a resolution (``deliveries``, the outbox)."""
    target = f"alert:{alert_id}"
    async with sessions() as session, session.begin():
        alert = await session.get(Alert, alert_id)
        if alert is None or alert.institution_id != actor.institution:
            session.add(audit_row(actor, "resolveAlert", target, "not_found"))
            return Change(Outcome.NOT_FOUND)
        if actor.role != "admin" and alert.raised_by != actor.id:
            session.add(audit_row(actor, "resolveAlert", target, "denied", _NOT_ALLOWED))
            return Change(Outcome.NOT_ALLOWED, alert)
        if alert.resolved_at is not None:
            return Change(Outcome.ALREADY, alert, alert.resolved_at)
        now = utcnow()
        done = await session.execute(
            update(Alert)
            .where(Alert.id == alert_id, Alert.resolved_at.is_(None))
            .values(resolved_at=now, resolved_by=actor.id)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return Change(Outcome.ALREADY, alert)
        session.add(audit_row(actor, "resolveAlert", target, "ok", {"alertId": alert_id}))
        await session.refresh(alert)
        queued = await queue(session, deliveries(alert) if deliveries else ())
    return Change(Outcome.OK, alert, now, queued)


async def roll_call(sessions: Sessions, alert_id: int) -> list[RollCallEntry]:
    """Every targeted person with their directory name and acknowledgement, by id."""
    async with sessions() as session:
        rows = await session.execute(
            select(
                AlertRecipient.user_id,
                User.display_name,
                User.role,
                AlertRecipient.acknowledged_at,
            )
            .join(User, User.id == AlertRecipient.user_id, isouter=True)
            .where(AlertRecipient.alert_id == alert_id)
            .order_by(AlertRecipient.user_id)
        )
        return [
            RollCallEntry(user_id, name or user_id, role or "", at)
            for user_id, name, role, at in rows
        ]


async def roll_calls(
    sessions: Sessions, alert_ids: Sequence[int]
) -> dict[int, list[RollCallEntry]]:
    """:func:`roll_call` of several alerts in one query (a page of alerts)."""
    found: dict[int, list[RollCallEntry]] = {alert_id: [] for alert_id in alert_ids}
    if not found:
        return found
    async with sessions() as session:
        rows = await session.execute(
            select(
                AlertRecipient.alert_id,
                AlertRecipient.user_id,
                User.display_name,
                User.role,
                AlertRecipient.acknowledged_at,
            )
            .join(User, User.id == AlertRecipient.user_id, isouter=True)
            .where(AlertRecipient.alert_id.in_(list(found)))
            .order_by(AlertRecipient.alert_id, AlertRecipient.user_id)
        )
        for alert_id, user_id, name, role, at in rows:
            found[alert_id].append(RollCallEntry(user_id, name or user_id, role or "", at))
    return found


async def alert_page(
    sessions: Sessions,
    *,
    institution: str,
    viewer: str,
    manager: bool,
    resolved: bool | None,
    before: int | None,
    first: int,
) -> tuple[list[Alert], int | None]:
    """Up to ``first`` of the institution's alerts with ids below ``before``, newest
    first, and the id to continue below (None: no older ones).

    What ``Query.alert`` shows the viewer: every alert of the institution to a
    ``manager`` (admins, services); to anyone else those they raised or that
    target them. ``resolved``: only resolved (True), only open (False), both (None).
    Keyset on ``ix_alerts_institution_id_id``: a page costs the same at any depth,
    and alerts raised meanwhile do not shift the older pages.
    """
    query = select(Alert).where(Alert.institution_id == institution)
    if not manager:
        targeted = select(AlertRecipient.alert_id).where(AlertRecipient.user_id == viewer)
        query = query.where(or_(Alert.raised_by == viewer, Alert.id.in_(targeted)))
    if resolved is not None:
        done = Alert.resolved_at.is_not(None)
        query = query.where(done if resolved else Alert.resolved_at.is_(None))
    if before is not None:
        query = query.where(Alert.id < before)
    query = query.order_by(Alert.id.desc()).limit(first + 1)
    async with sessions() as session:
        rows = list(await session.scalars(query))
    if len(rows) > first:
        return rows[:first], rows[first - 1].id
    return rows, None
