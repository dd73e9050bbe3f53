"""Analytics reads. Hourly and daily buckets are rolled up here from minute rows
(see db/analytics_models.py for why nothing else is materialized)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import distinct, func, select

from db.analytics_models import ConsumerOffset, EventMinute, EventUserMinute
from db.engine import Sessions

BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def floor(at: datetime, bucket: str) -> datetime:
    at = utc(at).replace(second=0, microsecond=0)
    if bucket in ("hour", "day"):
        at = at.replace(minute=0)
    if bucket == "day":
        at = at.replace(hour=0)
    return at


async def series(
    sessions: Sessions,
    institution: str,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: str,
    event_type: str | None = None,
) -> list[tuple[datetime, int]]:
    """Points for every bucket in [start, end), zeros included, oldest first."""
    totals: dict[datetime, int] = defaultdict(int)
    async with sessions() as session:
        if metric == "active_users":
            stmt = select(EventUserMinute.bucket, EventUserMinute.user_id).where(
                EventUserMinute.institution_id == institution,
                EventUserMinute.bucket >= start,
                EventUserMinute.bucket < end,
            )
            if event_type:
                stmt = stmt.where(EventUserMinute.type == event_type)
            seen: dict[datetime, set[str]] = defaultdict(set)
            for at, user in await session.execute(stmt.distinct()):
                seen[floor(at, bucket)].add(user)
            totals.update({k: len(v) for k, v in seen.items()})
        else:
            column = EventMinute.errors if metric == "errors" else EventMinute.count
            stmt2 = (
                select(EventMinute.bucket, func.sum(column))
                .where(
                    EventMinute.institution_id == institution,
                    EventMinute.bucket >= start,
                    EventMinute.bucket < end,
                )
                .group_by(EventMinute.bucket)
            )
            if event_type:
                stmt2 = stmt2.where(EventMinute.type == event_type)
            for at, n in await session.execute(stmt2):
                totals[floor(at, bucket)] += int(n or 0)
    points, at = [], floor(start, bucket)
    while at < end:
        points.append((at, totals.get(at, 0)))
        at += BUCKETS[bucket]
    return points


async def top_events(
    sessions: Sessions, institution: str, start: datetime, end: datetime, limit: int
) -> list[tuple[str, int]]:
    total = func.sum(EventMinute.count).label("total")
    async with sessions() as session:
        rows = await session.execute(
            select(EventMinute.type, total)
            .where(
                EventMinute.institution_id == institution,
                EventMinute.bucket >= start,
                EventMinute.bucket < end,
            )
            .group_by(EventMinute.type)
            .order_by(total.desc(), EventMinute.type)
            .limit(limit)
        )
        return [(t, int(n)) for t, n in rows]


async def active_users(sessions: Sessions, institution: str, start: datetime, end: datetime) -> int:
    async with sessions() as session:
        found = await session.scalar(
            select(func.count(distinct(EventUserMinute.user_id))).where(
                EventUserMinute.institution_id == institution,
                EventUserMinute.bucket >= start,
                EventUserMinute.bucket < end,
            )
        )
        return int(found or 0)


async def breakdown(
    sessions: Sessions, institution: str, start: datetime, end: datetime, by: str
) -> list[tuple[str, int]]:
    """Events per department or classroom; events that carry neither are left out."""
    key = EventMinute.department_id if by == "department" else EventMinute.classroom_id
    total = func.sum(EventMinute.count).label("total")
    async with sessions() as session:
        rows = await session.execute(
            select(key, total)
            .where(
                EventMinute.institution_id == institution,
                EventMinute.bucket >= start,
                EventMinute.bucket < end,
                key != "",
            )
            .group_by(key)
            .order_by(total.desc(), key)
        )
        return [(k, int(n)) for k, n in rows]


async def by_type(
    sessions: Sessions, institution: str, start: datetime
) -> list[tuple[str, int, int]]:
    """(type, events, errors) since ``start``: the live snapshot's raw material."""
    async with sessions() as session:
        rows = await session.execute(
            select(EventMinute.type, func.sum(EventMinute.count), func.sum(EventMinute.errors))
            .where(EventMinute.institution_id == institution, EventMinute.bucket >= start)
            .group_by(EventMinute.type)
            .order_by(EventMinute.type)
        )
        return [(t, int(n), int(e)) for t, n, e in rows]


async def consumer_offsets(sessions: Sessions) -> list[ConsumerOffset]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ConsumerOffset).order_by(
                ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition
            )
        )
        return list(rows)


async def group_offsets(sessions: Sessions, group: str) -> list[ConsumerOffset]:
    """The offsets ``group`` stored with its aggregates: what was applied, exactly
    (the consumer lag's lower side, ``streams/kafka_lag.py``)."""
    async with sessions() as session:
        rows = await session.scalars(
            select(ConsumerOffset)
            .where(ConsumerOffset.group_id == group)
            .order_by(ConsumerOffset.topic, ConsumerOffset.partition)
        )
        return list(rows)
