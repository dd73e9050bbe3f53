"""Group commit for announcements: concurrent publishes share one transaction.

Why: a publish must be committed before it is delivered (subscribers and the
``announcements`` query must agree), and per publish that commit was the most
expensive thing the server did. Measured with SQLite and 8 concurrent publishers,
the ORM unit of work (flush, identity map, commit bookkeeping) took about 40% of
the server's CPU, the database itself about 5%. Here each caller queues its row
and awaits its own result; one writer task takes *everything queued so far* and
stores it with three ``INSERT``\\ s (announcements with ``RETURNING id``, their
audit rows, their outbox messages of ``db/outbox.py``) in one transaction: Core
statements on Postgres, on a connection the writer keeps while its queue is
non-empty (``_store`` says why), the same three as SQL text on aiosqlite's
connection on SQLite (``_sqlite_write``).
Nothing waits on a timer: a lone publish is written after one turn of the event
loop, and under load the batch is whatever arrived during the previous write and
that turn, so cost per publish falls as load rises while latency does not.

A failed batch is retried row by row, each in its own transaction, so one bad row
(a foreign key, a value too long for Postgres) fails only its own request.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db import outbox
from db.models import Announcement, AuditEntry, OutboxEntry, utcnow
from db.outbox import Deliveries, Delivery, Queued
from db.repo import Actor, audit_values

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NewAnnouncement:
    actor: Actor
    channel: str
    institution_id: str | None
    title: str
    body: str
    priority: str
    # The messages that announce the stored row, committed with it (the outbox).
    deliveries: Deliveries[StoredAnnouncement] | None = None


@dataclass(slots=True)
class StoredAnnouncement:
    """The committed row, with the same attribute names as the ORM model (not
    frozen only so the writer can attach ``queued`` once the outbox ids exist)."""

    id: int
    channel: str
    institution_id: str | None
    author_id: str
    title: str
    body: str
    priority: str
    created_at: datetime
    queued: tuple[Queued, ...] = ()  # its committed outbox messages, to deliver


_Pending = tuple[NewAnnouncement, "asyncio.Future[StoredAnnouncement]"]
_NONE = object()  # no value seen yet (None is a value)


class AnnouncementWriter:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._writer: asyncio.Task[None] | None = None
        # Postgres: the writer keeps one connection while its queue is non-empty
        # (see _store). Not on SQLite, whose one pooled connection every other
        # query needs too.
        self._hold = engine.dialect.name != "sqlite"
        self._held: AsyncConnection | None = None
        self.batches = 0  # for tests and the benchmark: how much sharing happened
        self.rows = 0

    async def create(self, new: NewAnnouncement) -> StoredAnnouncement:
        """Store ``new`` and its audit row; return once they are committed."""
        future: asyncio.Future[StoredAnnouncement] = asyncio.get_running_loop().create_future()
        self._queue.append((new, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="announcement-writer")
        return await future

    async def close(self) -> None:
        """Let queued rows finish (the lifespan calls this before disposing the engine)."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            await self._release()

    async def _drain_queue(self) -> None:
        while self._queue:
            # One turn of the event loop first: every request that is already
            # runnable (parsed in the same wake-up, resumed by the previous commit)
            # reaches the queue before the batch is taken. Under a flood through
            # uvicorn that made batches of ~7 rows instead of ~4 and 1.2x the
            # publishes/s; a lone publish waits one loop turn, microseconds.
            await asyncio.sleep(0)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            # A caller that was cancelled (client gone) no longer needs an answer, but
            # its row is still written: the request got as far as "store", like before.
            try:
                stored = await self._store([new for new, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0][1], exc)
                    continue
                log.warning("db.group_commit_retry_rows", rows=len(batch), error=repr(exc))
                await self._one_by_one(batch)
                continue
            self.batches += 1
            self.rows += len(batch)
            for (_, future), row in zip(batch, stored, strict=True):
                if not future.done():
                    future.set_result(row)

    async def _store(self, rows: list[NewAnnouncement]) -> list[StoredAnnouncement]:
        """Write one batch; on Postgres on the connection held since the queue filled.

        Why hold it: every checkout from the pool runs its pre-ping, which on
        asyncpg is three round trips (``BEGIN``, ``;``, ``ROLLBACK``), and one batch
        is in flight at a time, so under a flood those round trips set the
        publishes/s (1.16-1.25x with no pre-ping, in alternating pairs). A held
        connection is not pinged, so when one fails the batch is tried once more on
        a fresh, pinged connection before it counts as failed: a database that
        restarted under the writer costs a retry, not the batch.
        """
        if not self._hold:
            return await self._write(rows)
        try:
            if self._held is None:
                self._held = await self._engine.connect()
            return await self._write(rows, self._held)
        except Exception as exc:
            log.info("db.group_commit_retry_on_fresh_connection", error=repr(exc))
            await self._release()
            return await self._write(rows)

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                await held.close()
            except Exception as exc:  # a dead connection: the pool discards it anyway
                log.info("db.group_commit_release_failed", error=repr(exc))

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        for new, future in batch:
            try:
                (row,) = await self._write([new])
            except Exception as exc:
                _fail(future, exc)
            else:
                if not future.done():
                    future.set_result(row)

    async def _write(
        self, rows: list[NewAnnouncement], held: AsyncConnection | None = None
    ) -> list[StoredAnnouncement]:
        """Store ``rows`` in one transaction, on ``held`` or a connection of its own."""
        now = utcnow()
        values = [
            {
                "channel": r.channel,
                "institution_id": r.institution_id,
                "author_id": r.actor.id or "",
                "title": r.title,
                "body": r.body,
                "priority": r.priority,
                "created_at": now,
            }
            for r in rows
        ]
        if self._engine.dialect.name == "sqlite":
            async with self._engine.connect() as conn:
                return await _sqlite_write(conn, values, rows, now)
        elif held is not None:
            async with held.begin():
                return await _core_write(held, values, rows, now)
        else:
            async with self._engine.begin() as conn:
                return await _core_write(conn, values, rows, now)


def _stored(rows: list[NewAnnouncement], ids: list[int], now: datetime) -> list[StoredAnnouncement]:
    return [
        StoredAnnouncement(
            id=i,
            channel=r.channel,
            institution_id=r.institution_id,
            author_id=r.actor.id or "",
            title=r.title,
            body=r.body,
            priority=r.priority,
            created_at=now,
        )
        for r, i in zip(rows, ids, strict=True)
    ]


def _deliveries(
    rows: list[NewAnnouncement], stored: list[StoredAnnouncement]
) -> tuple[list[Delivery], list[StoredAnnouncement]]:
    """Every row's messages, flat, and for each message the row it belongs to."""
    flat: list[Delivery] = []
    owners: list[StoredAnnouncement] = []
    for new, row in zip(rows, stored, strict=True):
        if new.deliveries is not None:
            for delivery in new.deliveries(row):
                flat.append(delivery)
                owners.append(row)
    return flat, owners


def _attach(owners: list[StoredAnnouncement], queued: list[Queued]) -> None:
    """Give each stored row its committed messages (rows are built before the
    outbox ids exist; rebuilding them with ``replace`` cost ~3 µs a publish)."""
    for row, item in zip(owners, queued, strict=True):
        row.queued = (*row.queued, item)


_CHECKED = ("channel", "author_id", "title", "body")
_RETURNING = f" RETURNING id, {', '.join(_CHECKED)}"
# Built once: SQLAlchemy memoizes a statement's cache key on the object, so a
# statement rebuilt per batch paid its construction and its cache key every time.
_INSERT_RETURNING = insert(Announcement).returning(Announcement.id, sort_by_parameter_order=True)
_INSERT_AUDIT = insert(AuditEntry)


async def _core_write(
    conn: AsyncConnection, values: list[dict[str, Any]], rows: list[NewAnnouncement], now: datetime
) -> list[StoredAnnouncement]:
    """The batch, its audit rows and its outbox messages as Core inserts, in the
    caller's transaction."""
    # batched by SQLAlchemy's sentinel-ordered "insertmanyvalues"
    ids = list((await conn.execute(_INSERT_RETURNING, values)).scalars())
    audit = [_audit(r, i, now) for r, i in zip(rows, ids, strict=True)]
    await conn.execute(_INSERT_AUDIT, audit)
    stored = _stored(rows, ids, now)
    deliveries, owners = _deliveries(rows, stored)
    _attach(owners, await outbox.queue_core(conn, deliveries))
    return stored


async def _sqlite_write(
    conn: AsyncConnection, values: list[dict[str, Any]], rows: list[NewAnnouncement], now: datetime
) -> list[StoredAnnouncement]:
    """Store a batch, its audit rows and its outbox messages in one SQLite
    transaction.

    Why on aiosqlite's connection directly: every SQLAlchemy statement on aiosqlite
    is three or four round trips to its thread (cursor, execute, fetch, close), and
    each round trip is a thread hand-off and a GIL switch; with commit and the
    pool's reset a batch took about ten, which made the group commit the largest
    single part of a publish after GraphQL itself (740 µs of CPU for a batch of 8
    on the 2026-12-02 machine). Here a batch is four: the ``INSERT … RETURNING``,
    the audit ``INSERT``, ``COMMIT`` and the pool's reset. The connection is still
    the pool's (SQLite has one writer; a second connection would wait in the busy
    handler), and errors leave as SQLAlchemy's ``DBAPIError`` subclasses, as from
    any other statement.

    Why one multi-row ``INSERT … RETURNING`` and not SQLAlchemy's
    ``sort_by_parameter_order``: SQLAlchemy cannot batch that on SQLite and sends
    one ``INSERT`` per row. The SQL text is built once per batch size and each
    value goes through its column's own bind processor, exactly what a Core insert
    stores (raw datetimes would differ from SQLAlchemy's text format).

    SQLite inserts the rows of one ``VALUES`` list in order and gives each rowid
    max + 1, so the ids sorted are the ids in ``values`` order; RETURNING itself
    promises no order, hence the sort. The columns that tell rows apart are checked
    against the input: a mismatch raises, and the caller retries row by row.
    """
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None  # a checked-out pool connection always has one
    insert_sql, insert_params = _multi_row(Announcement, conn.dialect, values, _RETURNING)
    statement = insert_sql
    try:
        inserted = await driver.execute_fetchall(insert_sql, insert_params)
        returned = sorted(inserted, key=lambda r: int(r[0]))
        for got, expected in zip(returned, values, strict=True):
            if tuple(got[1:]) != tuple(expected[c] for c in _CHECKED):
                raise RuntimeError("multi-row INSERT returned rows out of order")
        ids = [int(got[0]) for got in returned]
        audit = [_audit(r, i, now) for r, i in zip(rows, ids, strict=True)]
        statement, audit_params = _multi_row(AuditEntry, conn.dialect, audit)
        await driver.execute_fetchall(statement, audit_params)
        stored = _stored(rows, ids, now)
        deliveries, owners = _deliveries(rows, stored)
        queued: list[Queued] = []
        if deliveries:
            statement, params = _multi_row(
                OutboxEntry, conn.dialect, outbox.values(deliveries, now), " RETURNING id, channel"
            )
            got_ids = sorted(await driver.execute_fetchall(statement, params), key=lambda r: r[0])
            if [r[1] for r in got_ids] != [d.channel for d in deliveries]:
                raise RuntimeError("multi-row INSERT returned outbox rows out of order")
            queued = outbox.queued([int(r[0]) for r in got_ids], deliveries)
        statement = "COMMIT"
        await driver.commit()
    except BaseException as exc:
        try:
            await driver.rollback()
        except Exception as rollback_error:  # the original error is the one to report
            log.warning("db.group_commit_rollback_failed", error=repr(rollback_error))
        if isinstance(exc, sqlite3.Error):
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc
        raise
    _attach(owners, queued)
    return stored


def _multi_row(
    model: type[Announcement] | type[AuditEntry] | type[OutboxEntry],
    dialect: Dialect,
    values: list[dict[str, Any]],
    returning: str = "",
) -> tuple[str, tuple[Any, ...]]:
    """One ``INSERT`` of all ``values`` into ``model``'s table, bound as Core would."""
    columns = tuple(values[0])
    processors = _bind_processors(model, dialect, columns)
    # The rows of a batch share one timestamp object; SQLite's DATETIME processor
    # formats it through a dict of its fields, ~2 µs a row and column. Each column
    # remembers its last value, compared by identity, and reuses its processed form.
    last: list[tuple[Any, Any]] = [(_NONE, None)] * len(columns)
    params: list[Any] = []
    for sent in values:
        for i, process in enumerate(processors):
            value = sent[columns[i]]
            if process is not None and value is not None:
                seen, done = last[i]
                if value is not seen:
                    done = process(value)
                    last[i] = (value, done)
                value = done
            params.append(value)
    return _multi_row_sql(model.__tablename__, len(values), columns, returning), tuple(params)


@functools.lru_cache(maxsize=8)
def _bind_processors(
    model: type[Announcement] | type[AuditEntry] | type[OutboxEntry],
    dialect: Dialect,
    columns: tuple[str, ...],
) -> tuple[Callable[[Any], Any] | None, ...]:
    table = model.__table__.c
    return tuple(table[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns)


@functools.lru_cache(maxsize=128)
def _multi_row_sql(table: str, count: int, columns: tuple[str, ...], returning: str) -> str:
    row = "(" + ", ".join("?" for _ in columns) + ")"
    rows = ", ".join([row] * count)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {rows}{returning}"


def _audit(row: NewAnnouncement, announcement_id: int, at: datetime) -> dict[str, Any]:
    """The publish's audit row: the same columns as every other (client IP, user
    agent and request id from ``row.actor``), in the batch's second ``INSERT``."""
    detail = {"announcementId": announcement_id}
    return audit_values(row.actor, "publishAnnouncement", row.channel, "ok", detail, at)


def _fail(future: asyncio.Future[StoredAnnouncement], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
