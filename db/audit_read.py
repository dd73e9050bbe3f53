"""Reading the audit log: one institution's rows, newest first, a page at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from db.engine import Sessions
from db.models import AuditEntry


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Conditions on rows, all optional; ``since`` inclusive, ``until`` exclusive."""

    action: str | None = None
    outcome: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _utc(value: datetime) -> datetime:
    # SQLite compares the stored text, which is UTC without an offset.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def page(
    sessions: Sessions, institution: str, query: AuditQuery, before: int | None, first: int
) -> tuple[list[AuditEntry], int | None]:
    """Up to ``first`` rows of ``institution`` with ids below ``before``, newest
    first, and the id to continue below (None: no more rows).

    Rows without an institution (failed authentications, whose claimed identity
    is unverified) belong to no institution and are never returned here.
    Keyset pagination on the primary key (``ix_audit_log_institution_id_id``):
    a page costs the same however deep it is, and rows appended meanwhile do
    not shift later pages.
    """
    statement = select(AuditEntry).where(AuditEntry.institution_id == institution)
    if before is not None:
        statement = statement.where(AuditEntry.id < before)
    if query.action is not None:
        statement = statement.where(AuditEntry.action == query.action)
    if query.outcome is not None:
        statement = statement.where(AuditEntry.outcome == query.outcome)
    if query.actor is not None:
        statement = statement.where(AuditEntry.actor_id == query.actor)
    if query.since is not None:
        statement = statement.where(AuditEntry.at >= _utc(query.since))
    if query.until is not None:
        statement = statement.where(AuditEntry.at < _utc(query.until))
    async with sessions() as session:
        rows = list(
            await session.scalars(statement.order_by(AuditEntry.id.desc()).limit(first + 1))
        )
    if len(rows) > first:
        return rows[:first], rows[first - 1].id
    return rows, None
