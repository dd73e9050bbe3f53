"""Repository functions: each takes the session factory and opens one session per unit
of work, so no session outlives a request or is shared between tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from db.engine import Sessions
from db.models import Announcement, AuditEntry, Institution, User


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something, for the audit log; all None for an anonymous caller."""

    id: str | None = None
    role: str | None = None
    institution: str | None = None


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


async def audit(
    sessions: Sessions,
    actor: Actor,
    action: str,
    target: str | None,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit row in its own transaction (used for denials and failures)."""
    async with sessions() as session, session.begin():
        session.add(_audit(actor, action, target, outcome, detail or {}))


def _audit(
    actor: Actor, action: str, target: str | None, outcome: str, detail: dict[str, Any]
) -> AuditEntry:
    return AuditEntry(
        actor_id=actor.id,
        actor_role=actor.role,
        institution_id=actor.institution,
        action=action,
        target=target,
        outcome=outcome,
        detail=detail,
    )
