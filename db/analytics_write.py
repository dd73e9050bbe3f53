"""Apply one consumed batch: aggregates, offsets and alerts in one transaction.

Exactly-once comes from the offsets table, not from Kafka: the transaction first
locks the (group, topic, partition) rows of the batch (``SELECT ... FOR UPDATE``
on Postgres), drops every record below the stored next offset, applies the rest
and advances the offsets before it commits. A replay after a crash, or a second
consumer still holding a revoked partition, finds the offsets already advanced
and applies nothing twice. SQLite (embedded mode, one process) ignores the lock.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from db.analytics_models import AlertFired, ConsumerOffset, EventMinute, EventUserMinute
from db.engine import Sessions
from db.models import utcnow
from streams.events import Event

FAILED_LOGIN = "auth.failed"
MINUTE_KEY = ("bucket", "institution_id", "type", "department_id", "classroom_id")
USER_MINUTE_KEY = ("bucket", "institution_id", "type", "user_id")


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Consumed:
    """One record of a batch; ``event`` is None for an invalid one (dead-lettered)."""

    topic: str
    partition: int
    offset: int
    event: Event | None


@dataclass(frozen=True, slots=True)
class Thresholds:
    errors_per_minute: int
    failed_logins_per_minute: int


@dataclass(frozen=True, slots=True)
class Alert:
    institution_id: str
    rule: str
    subject: str
    bucket: datetime
    value: int
    threshold: int


@dataclass
class Applied:
    """What a committed batch changed; ``events`` excludes skipped replays."""

    events: list[Event] = field(default_factory=list)
    skipped: int = 0
    alerts: list[Alert] = field(default_factory=list)
    institutions: set[str] = field(default_factory=set)


class _Statements:
    """The batch's statements, built once per dialect.

    Why: SQLAlchemy memoizes a statement's cache key on the statement object, so
    statements rebuilt per batch paid their construction, their cache key (over
    every ``ON CONFLICT`` clause) and the ORM's bulk-update path each time: about
    as much CPU as the database's own work for a batch of a publish flood's events.
    Only the parameters change between batches, so they are bound parameters here,
    executed as Core statements on the session's connection.
    """

    def __init__(self, dialect: str) -> None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        offsets: Table = ConsumerOffset.__table__  # type: ignore[assignment]
        self.claim_offsets = insert(offsets).on_conflict_do_nothing()
        self.advance_offset = (
            update(offsets)
            .where(
                offsets.c.group_id == bindparam("g"),
                offsets.c.topic == bindparam("t"),
                offsets.c.partition == bindparam("p"),
            )
            .values(
                next_offset=bindparam("n"),
                high_watermark=bindparam("hw"),
                latency_ms=bindparam("lat"),
                updated_at=func.now(),
            )
        )
        minutes: Table = EventMinute.__table__  # type: ignore[assignment]
        upsert = insert(minutes)
        self.add_minutes = upsert.on_conflict_do_update(
            index_elements=list(MINUTE_KEY),
            set_={
                "count": minutes.c.count + upsert.excluded.count,
                "errors": minutes.c.errors + upsert.excluded.errors,
            },
        )
        users: Table = EventUserMinute.__table__  # type: ignore[assignment]
        upsert = insert(users)
        self.add_user_minutes = upsert.on_conflict_do_update(
            index_elements=list(USER_MINUTE_KEY),
            set_={"count": users.c.count + upsert.excluded.count},
        )
        alerts: Table = AlertFired.__table__  # type: ignore[assignment]
        self.record_alert = insert(alerts).on_conflict_do_nothing()


@functools.cache
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


@functools.lru_cache(maxsize=64)
def _lock_offsets_select(partitions: int) -> Any:
    """``SELECT … FOR UPDATE`` of the group's rows for ``partitions`` (topic,
    partition) pairs, bound as ``g``, ``t0``/``p0``, ``t1``/``p1``…"""
    offsets: Table = ConsumerOffset.__table__  # type: ignore[assignment]
    keys = [
        and_(offsets.c.topic == bindparam(f"t{i}"), offsets.c.partition == bindparam(f"p{i}"))
        for i in range(partitions)
    ]
    return (
        select(offsets.c.topic, offsets.c.partition, offsets.c.next_offset)
        .where(offsets.c.group_id == bindparam("g"), or_(*keys))
        .order_by(offsets.c.topic, offsets.c.partition)  # one lock order: no deadlock
        .with_for_update()
    )


async def apply_batch(
    sessions: Sessions,
    group: str,
    records: list[Consumed],
    *,
    high_watermarks: dict[tuple[str, int], int] | None = None,
    thresholds: Thresholds | None = None,
) -> Applied:
    """Apply ``records`` once; safe to call again with any overlapping batch."""
    result = Applied()
    partitions = sorted({(r.topic, r.partition) for r in records})
    if not partitions:
        return result
    async with sessions() as session, session.begin():
        conn = await session.connection()
        sql = _statements(conn.dialect.name)
        stored = await _lock_offsets(conn, group, partitions)
        fresh = [r for r in records if r.offset >= stored[(r.topic, r.partition)]]
        result.skipped = len(records) - len(fresh)
        result.events = [r.event for r in fresh if r.event is not None]
        await _add_aggregates(conn, result.events)
        latency = _max_latency_ms(result.events)
        ends: dict[tuple[str, int], int] = {}
        for r in fresh:
            key = (r.topic, r.partition)
            ends[key] = max(ends.get(key, 0), r.offset + 1)
        if ends:
            await conn.execute(
                sql.advance_offset,
                [
                    {
                        "g": group,
                        "t": topic,
                        "p": part,
                        "n": end,
                        "hw": (high_watermarks or {}).get((topic, part)),
                        "lat": latency,
                    }
                    for (topic, part), end in sorted(ends.items())
                ],
            )
        result.institutions = {e.institution_id for e in result.events}
        if thresholds is not None and result.events:
            result.alerts = await _raise_alerts(conn, result.events, thresholds)
    return result


async def stored_offsets(
    sessions: Sessions, group: str, partitions: set[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """Next offsets to apply, without locking (to skip replayed dead letters)."""
    async with sessions() as session:
        rows = await session.execute(
            select(
                ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset
            ).where(ConsumerOffset.group_id == group)
        )
        return {(t, p): n for t, p, n in rows if (t, p) in partitions}


async def _lock_offsets(
    conn: AsyncConnection, group: str, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    rows = [
        {"group_id": group, "topic": t, "partition": p, "next_offset": 0} for t, p in partitions
    ]
    await conn.execute(_statements(conn.dialect.name).claim_offsets, rows)
    params: dict[str, Any] = {"g": group}
    for i, (topic, part) in enumerate(partitions):
        params[f"t{i}"], params[f"p{i}"] = topic, part
    found = await conn.execute(_lock_offsets_select(len(partitions)), params)
    return {(t, p): n for t, p, n in found}


async def _add_aggregates(conn: AsyncConnection, events: list[Event]) -> None:
    if not events:
        return
    counts: Counter[tuple[datetime, str, str, str, str]] = Counter()
    errors: Counter[tuple[datetime, str, str, str, str]] = Counter()
    users: Counter[tuple[datetime, str, str, str]] = Counter()
    for e in events:
        bucket = minute(e.occurred_at)
        key = (bucket, e.institution_id, e.type, e.department_id or "", e.classroom_id or "")
        counts[key] += 1
        if e.is_error:
            errors[key] += 1
        if e.user_id:
            users[(bucket, e.institution_id, e.type, e.user_id)] += 1
    sql = _statements(conn.dialect.name)
    await conn.execute(
        sql.add_minutes,
        [
            dict(zip(MINUTE_KEY, k, strict=True)) | {"count": n, "errors": errors[k]}
            for k, n in sorted(counts.items())  # sorted: concurrent upserts lock in one order
        ],
    )
    if users:
        await conn.execute(
            sql.add_user_minutes,
            [
                dict(zip(USER_MINUTE_KEY, k, strict=True)) | {"count": n}
                for k, n in sorted(users.items())
            ],
        )


def _max_latency_ms(events: list[Event]) -> float | None:
    if not events:
        return None
    newest = time.time()
    return max(0.0, max((newest - e.occurred_at.timestamp()) * 1000 for e in events))


async def _raise_alerts(
    conn: AsyncConnection, events: list[Event], limits: Thresholds
) -> list[Alert]:
    """Check the rules on the minutes this batch touched; record each alert once."""
    candidates: list[Alert] = []
    error_keys = {(e.institution_id, minute(e.occurred_at)) for e in events if e.is_error}
    for inst, bucket in sorted(error_keys):
        total = await conn.scalar(
            select(func.coalesce(func.sum(EventMinute.errors), 0)).where(
                EventMinute.institution_id == inst, EventMinute.bucket == bucket
            )
        )
        if int(total or 0) > limits.errors_per_minute:
            candidates.append(
                Alert(
                    inst,
                    "errors_per_minute",
                    "*",
                    bucket,
                    int(total or 0),
                    limits.errors_per_minute,
                )
            )
    login_keys = {
        (e.institution_id, e.user_id, minute(e.occurred_at))
        for e in events
        if e.type == FAILED_LOGIN and e.user_id
    }
    for inst, user, bucket in sorted(login_keys, key=str):
        failed = await conn.scalar(
            select(EventUserMinute.count).where(
                and_(
                    EventUserMinute.institution_id == inst,
                    EventUserMinute.bucket == bucket,
                    EventUserMinute.type == FAILED_LOGIN,
                    EventUserMinute.user_id == user,
                )
            )
        )
        if int(failed or 0) > limits.failed_logins_per_minute:
            limit = limits.failed_logins_per_minute
            candidates.append(Alert(inst, "failed_logins", str(user), bucket, failed or 0, limit))
    raised: list[Alert] = []
    for alert in candidates:
        done = await conn.execute(
            _statements(conn.dialect.name).record_alert,
            {
                "institution_id": alert.institution_id,
                "rule": alert.rule,
                "subject": alert.subject,
                "bucket": alert.bucket,
                "value": alert.value,
                "detail": {"threshold": alert.threshold},
            },
        )
        if getattr(done, "rowcount", 0) == 1:
            raised.append(alert)
    return raised


async def record_alert(
    sessions: Sessions,
    alert: Alert,
    detail: dict[str, Any],
    quiet_for: timedelta | None = None,
) -> bool:
    """Record ``alert`` in ``alerts_fired`` unless it is there already: True if this
    call recorded it (so raise it), False if another process or round did. For
    rules checked outside a batch (the consumer lag rules of ``streams/lag_alerts.py``,
    run by every server process).

    ``quiet_for``: also False when the same rule and subject was recorded, with any
    bucket, within that long. Why: a rule whose bucket is where one process first
    saw the condition (the minute it saw the lag) gave each server its own bucket
    when they saw it in different minutes, and the alert fired once per server. On
    Postgres an advisory lock per rule and subject makes check-and-insert atomic
    across processes.
    """
    async with sessions() as session, session.begin():
        conn = await session.connection()
        if quiet_for is not None:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                    {"k": f"alerts_fired:{alert.institution_id}:{alert.rule}:{alert.subject}"},
                )
            recent = await conn.execute(
                select(AlertFired.rule)
                .where(
                    AlertFired.institution_id == alert.institution_id,
                    AlertFired.rule == alert.rule,
                    AlertFired.subject == alert.subject,
                    AlertFired.at > utcnow() - quiet_for,
                )
                .limit(1)
            )
            if recent.first() is not None:
                return False
        done = await conn.execute(
            _statements(conn.dialect.name).record_alert,
            {
                "institution_id": alert.institution_id,
                "rule": alert.rule,
                "subject": alert.subject,
                "bucket": alert.bucket,
                "value": alert.value,
                "detail": {"threshold": alert.threshold, **detail},
            },
        )
        return getattr(done, "rowcount", 0) == 1
