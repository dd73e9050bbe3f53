"""Repository functions: each takes the session factory and opens one session per unit
of work, so no session outlives a request or is shared between tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import insert, select
from sqlalchemy.orm import selectinload

from db.engine import Sessions
from db.models import Announcement, AuditEntry, Institution, User, utcnow

# What became of an audited request: done, refused by the ACL, refused as missing
# (another institution's id reads as missing), failed (authentication), or refused
# by a limit (rate limits; failed-authentication floods folded into a count row).
AuditOutcome = Literal["ok", "denied", "not_found", "failed", "limited"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something and from where, for the audit log.

    ``id``, ``role`` and ``institution`` come from a verified token only (all None
    for an anonymous or unauthenticated caller); ``ip``, ``user_agent`` and
    ``request_id`` describe the request or WebSocket connection
    (``api/clientinfo.py``), so a row says where it came from even without an actor.
    """

    id: str | None = None
    role: str | None = None
    institution: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


async def list_institutions(sessions: Sessions, ids: Sequence[str]) -> list[Institution]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Institution)
            .where(Institution.id.in_(ids))
            .options(selectinload(Institution.departments), selectinload(Institution.classrooms))
            .order_by(Institution.id)
        )
        return list(rows)


async def get_user(sessions: Sessions, user_id: str) -> User | None:
    async with sessions() as session:
        return await session.get(User, user_id)


async def user_institution(sessions: Sessions, user_id: str) -> str | None:
    async with sessions() as session:
        return await session.scalar(select(User.institution_id).where(User.id == user_id))


async def users_in(sessions: Sessions, institution: str, ids: Sequence[str]) -> list[User]:
    """The directory's users of ``institution`` among ``ids`` (others are left out),
    in one query: the batch behind every ``User`` field of a response."""
    async with sessions() as session:
        rows = await session.scalars(
            select(User).where(User.institution_id == institution, User.id.in_(list(ids)))
        )
        return list(rows)


async def last_announcements(sessions: Sessions, channel: str, last: int) -> list[Announcement]:
    """The newest ``last`` announcements of a channel, oldest first."""
    async with sessions() as session:
        rows = await session.scalars(
            select(Announcement)
            .where(Announcement.channel == channel)
            .order_by(Announcement.id.desc())
            .limit(last)
        )
        return list(reversed(list(rows)))


async def announcement_page(
    sessions: Sessions, channel: str, before: int | None, first: int
) -> tuple[list[Announcement], int | None]:
    """Up to ``first`` announcements of ``channel`` with ids below ``before``, newest
    first, and the id to continue below (None: no older ones).

    Keyset pagination on ``ix_announcements_channel_id``, as ``db.audit_read.page``:
    a page costs the same however deep it is, and announcements published while a
    client pages do not shift or repeat the older pages.
    """
    statement = select(Announcement).where(Announcement.channel == channel)
    if before is not None:
        statement = statement.where(Announcement.id < before)
    async with sessions() as session:
        rows = list(
            await session.scalars(statement.order_by(Announcement.id.desc()).limit(first + 1))
        )
    if len(rows) > first:
        return rows[:first], rows[first - 1].id
    return rows, None


async def audit(
    sessions: Sessions,
    actor: Actor,
    action: str,
    target: str | None,
    outcome: AuditOutcome,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit row in its own transaction: for rows with no transaction of
    their own to join (denials, refused lookups, failed authentications, WebSocket
    connections, limit hits with ``outcome="limited"``). A mutation that writes
    inside a transaction adds :func:`audit_row` there instead, and publishes add
    theirs to the group commit's batch (``db/group_commit.py``).

    One Core ``INSERT``: no unit of work, no identity map for a row nobody reads back.
    """
    await append(sessions, [audit_values(actor, action, target, outcome, detail)])


async def append(sessions: Sessions, rows: list[dict[str, Any]]) -> None:
    """Insert audit rows (from :func:`audit_values`) in one transaction."""
    async with sessions() as session, session.begin():
        await session.execute(_INSERT, rows)


_INSERT = insert(AuditEntry)  # built once: its cache key is memoized on the object


def audit_values(
    actor: Actor,
    action: str,
    target: str | None,
    outcome: AuditOutcome,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The column values of one audit row (``db/group_commit.py`` inserts these)."""
    return {
        "at": at or utcnow(),
        "actor_id": actor.id,
        "actor_role": actor.role,
        "institution_id": actor.institution,
        "action": action[:64],  # the columns' lengths: Postgres refuses longer text
        "target": None if target is None else target[:200],
        "outcome": outcome,
        "detail": detail or {},
        "client_ip": actor.ip,
        "user_agent": actor.user_agent,
        "request_id": actor.request_id,
    }


def audit_row(
    actor: Actor,
    action: str,
    target: str | None,
    outcome: AuditOutcome,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """An audit row to ``session.add`` in a mutation's own transaction."""
    return AuditEntry(**audit_values(actor, action, target, outcome, detail))
