"""The transactional outbox: a message is committed with the row it announces.

Why: every mutation stored its row, committed, then published; a crash or a Redis
outage between the two left an acknowledged announcement (alert, notification)
that no subscriber ever received live. Now the message is a row of
``delivery_outbox`` in the same transaction, so "committed" implies "will be on
the bus": published right after the commit by the request itself, or, if that
fails or the process dies first, by the relay of any server process
(``api/outbox.py``). The row's id is the message's publish key on the bus, which
makes a second publish of it return the first one's offset instead of a duplicate.

This module holds the statements; the relay holds the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from db.models import OutboxEntry, utcnow

Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message to publish once the transaction that queues it commits."""

    channel: str
    kind: str
    data: dict[str, Any]


# What a repository is given to turn the row it wrote (with its id) into messages,
# inside its transaction. Repositories cannot import the schema that formats them.
Deliveries = Callable[[Row], Sequence[Delivery]]


@dataclass(frozen=True, slots=True)
class Queued:
    """A committed outbox row."""

    id: int
    channel: str
    kind: str
    data: dict[str, Any]

    @property
    def key(self) -> str:
        """The message's publish key on the bus (``ChannelLog.publish``)."""
        return f"outbox:{self.id}"


_INSERT = insert(OutboxEntry).returning(OutboxEntry.id, sort_by_parameter_order=True)


def values(deliveries: Iterable[Delivery], at: datetime) -> list[dict[str, Any]]:
    return [
        {"channel": d.channel, "kind": d.kind, "data": d.data, "created_at": at} for d in deliveries
    ]


def queued(ids: Sequence[int], deliveries: Sequence[Delivery]) -> list[Queued]:
    return [Queued(i, d.channel, d.kind, d.data) for i, d in zip(ids, deliveries, strict=True)]


async def queue_core(conn: AsyncConnection, deliveries: Sequence[Delivery]) -> list[Queued]:
    """Add ``deliveries`` in the caller's (Core) transaction."""
    if not deliveries:
        return []
    result = await conn.execute(_INSERT, values(deliveries, utcnow()))
    return queued(list(result.scalars()), deliveries)


async def queue(session: AsyncSession, deliveries: Sequence[Delivery]) -> list[Queued]:
    """Add ``deliveries`` in the caller's (ORM) transaction."""
    return await queue_core(await session.connection(), deliveries)


async def due(conn: AsyncConnection, older_than: timedelta, limit: int) -> list[Queued]:
    """Rows left behind longer than ``older_than``, oldest first, locked for this
    transaction; rows another relay holds are skipped, not waited for (Postgres)."""
    statement = (
        select(OutboxEntry.id, OutboxEntry.channel, OutboxEntry.kind, OutboxEntry.data)
        .where(OutboxEntry.created_at < utcnow() - older_than)
        .order_by(OutboxEntry.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    rows = await conn.execute(statement)
    return [Queued(r.id, r.channel, r.kind, dict(r.data)) for r in rows]


async def remove(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(delete(OutboxEntry).where(OutboxEntry.id.in_(ids)))


async def backlog(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many rows wait, and when the oldest was committed."""
    row = (
        await conn.execute(select(func.count(OutboxEntry.id), func.min(OutboxEntry.created_at)))
    ).one()
    return int(row[0]), row[1]
