"""Analytics: admins and services of an institution see its numbers, nobody else."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Annotated

import strawberry

from db import analytics_read as read
from db.analytics_models import ConsumerOffset
from db.analytics_read import utc
from resolvers.access import refuse
from resolvers.emit import emit
from resolvers.live_stats import delivery_stats, delivery_summary
from schema.analytics import (
    Breakdown,
    Bucket,
    Count,
    LiveMetrics,
    Metric,
    PartitionHealth,
    Point,
    SystemStatus,
    TrackActivityInput,
)
from schema.context import Context
from schema.errors import BadInput, Forbidden, NotFound
from schema.scalars import Long
from streams.acl import Role, Viewer
from streams.events import MAX_DATA_BYTES

MAX_POINTS = 2000
ACTIVITY_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,47}$")
LIVE_INTERVAL = 1.0  # the at-most-once-a-second promise of liveMetrics


async def _admin_of(ctx: Context, institution: str, action: str) -> Viewer:
    """The viewer if they are an admin or service of ``institution``; refusals are
    audited under ``action`` (the field's name)."""
    viewer = ctx.require_viewer()
    target = f"institution:{institution}"
    if viewer.institution != institution:
        await refuse(ctx, action, target, NotFound(f"no institution {institution!r}"))
    if viewer.role not in (Role.ADMIN, Role.SERVICE):
        error = Forbidden("analytics are for admins and services of the institution")
        await refuse(ctx, action, target, error)
    return viewer


def _range(start: datetime, end: datetime, bucket: Bucket) -> tuple[datetime, datetime]:
    start, end = utc(start), utc(end)
    if end <= start:
        raise BadInput("`to` must be after `from`")
    if (end - start) / read.BUCKETS[bucket.value] > MAX_POINTS:
        raise BadInput(f"more than {MAX_POINTS} buckets; use a larger bucket or a shorter range")
    return start, end


From = Annotated[
    datetime,
    strawberry.argument(name="from", description="Start of the range (inclusive; UTC if naive)."),
]
To = Annotated[
    datetime,
    strawberry.argument(
        name="to", description="End of the range (exclusive; after `from`, else BAD_INPUT)."
    ),
]
InstitutionId = Annotated[
    strawberry.ID,
    strawberry.argument(
        description="Your institution's id (another one: NOT_FOUND; admins and services only)."
    ),
]


async def analytics(
    info: strawberry.Info[Context],
    institution_id: InstitutionId,
    metric: Annotated[Metric, strawberry.argument(description="What to count.")],
    from_: From,
    to: To,
    bucket: Annotated[
        Bucket,
        strawberry.argument(description="Width of a point; at most 2000 points per range."),
    ] = Bucket.HOUR,
    event_type: Annotated[
        str | None,
        strawberry.argument(
            description="Only events of this type (e.g. activity.page_view); all if omitted."
        ),
    ] = None,
) -> list[Point]:
    """A time series with a point for every bucket in [from, to), zeros included."""
    ctx = info.context
    await _admin_of(ctx, str(institution_id), "analytics")
    start, end = _range(from_, to, bucket)
    points = await read.series(
        ctx.sessions, str(institution_id), metric.value, start, end, bucket.value, event_type
    )
    return [Point(at=at, value=Long(n)) for at, n in points]


async def top_events(
    info: strawberry.Info[Context],
    institution_id: InstitutionId,
    from_: From,
    to: To,
    limit: Annotated[
        int, strawberry.argument(description="How many types, 1 to 100 (else BAD_INPUT).")
    ] = 10,
) -> list[Count]:
    await _admin_of(info.context, str(institution_id), "topEvents")
    if not 1 <= limit <= 100:
        raise BadInput("limit must be between 1 and 100")
    start, end = _range(from_, to, Bucket.DAY)
    rows = await read.top_events(info.context.sessions, str(institution_id), start, end, limit)
    return [Count(key=t, count=Long(n)) for t, n in rows]


async def active_users(
    info: strawberry.Info[Context], institution_id: InstitutionId, from_: From, to: To
) -> int:
    """Distinct users with at least one event in [from, to); exact over any range."""
    await _admin_of(info.context, str(institution_id), "activeUsers")
    start, end = _range(from_, to, Bucket.DAY)
    return await read.active_users(info.context.sessions, str(institution_id), start, end)


async def event_breakdown(
    info: strawberry.Info[Context],
    institution_id: InstitutionId,
    by: Annotated[Breakdown, strawberry.argument(description="What to count events by.")],
    from_: From,
    to: To,
) -> list[Count]:
    await _admin_of(info.context, str(institution_id), "eventBreakdown")
    start, end = _range(from_, to, Bucket.DAY)
    rows = await read.breakdown(info.context.sessions, str(institution_id), start, end, by.value)
    return [Count(key=k, count=Long(n)) for k, n in rows]


async def track_activity(
    info: strawberry.Info[Context],
    input: Annotated[
        TrackActivityInput, strawberry.argument(description="The interaction to record.")
    ],
) -> bool:
    """Record a frontend interaction as ``activity.<type>``; false if it was dropped."""
    ctx = info.context
    viewer = ctx.require_viewer()
    if not ACTIVITY_TYPE.fullmatch(input.type):
        raise BadInput("type must be 1-48 of a-z, 0-9, '_', '.', '-', starting with a letter")
    data: object = input.data if input.data is not None else {}
    if not isinstance(data, dict):
        raise BadInput("data must be a JSON object")
    if len(json.dumps(data, separators=(",", ":"))) > MAX_DATA_BYTES:
        raise BadInput(f"data is larger than {MAX_DATA_BYTES} bytes as JSON")
    event = f"activity.{input.type}"
    emitted = emit(ctx.services, viewer, event, data)
    # Queued, not awaited: like the event, tracking must not wait for a write.
    ctx.services.audit.record_later(ctx.actor, "trackActivity", event, "ok", {"emitted": emitted})
    return emitted


async def _snapshot(ctx: Context, institution: str, delivered: float) -> LiveMetrics:
    now = datetime.now(UTC)
    minute_ago = (now - timedelta(minutes=1)).replace(second=0, microsecond=0)
    rows = await read.by_type(ctx.sessions, institution, minute_ago)
    users = await read.active_users(ctx.sessions, institution, now - timedelta(minutes=5), now)
    return LiveMetrics(
        at=now,
        active_users=users,
        events_per_minute=[Count(key=t, count=Long(n)) for t, n, _ in rows],
        errors_per_minute=sum(e for _, _, e in rows),
        messages_delivered_per_minute=int(delivered),
        delivery=await delivery_summary(ctx),
    )


async def live_metrics(
    info: strawberry.Info[Context], institution_id: InstitutionId
) -> AsyncGenerator[LiveMetrics, None]:
    """Poll the aggregates once a second and push a snapshot when it changed.

    Polling, not notifications: aggregates are written by consumer processes that
    may not share this node's bus, and the one-second cap is the poll period.
    """
    ctx = info.context
    await _admin_of(ctx, str(institution_id), "liveMetrics")
    registry = ctx.services.metrics.registry
    window: list[float] = []
    last: str | None = None
    while True:
        window.append(registry.get_sample_value("edumatrix_messages_delivered_total") or 0.0)
        window = window[-61:]
        snapshot = await _snapshot(ctx, str(institution_id), window[-1] - window[0])
        key = json.dumps(
            [snapshot.active_users, [(c.key, c.count) for c in snapshot.events_per_minute]]
            + [snapshot.errors_per_minute, snapshot.messages_delivered_per_minute]
            + [_delivery_key(snapshot)]
        )
        if key != last:
            last = key
            yield snapshot
        await asyncio.sleep(LIVE_INTERVAL)


def _delivery_key(snapshot: LiveMetrics) -> object:
    """What of ``delivery`` makes a push: its numbers, and its window, which moves
    every minute (so a page re-reading its charts on pushes does so at least then)."""
    d = snapshot.delivery
    if d is None:
        return None
    latency = d.latency
    percentiles = None if latency is None else [latency.p50_ms, latency.p95_ms, latency.p99_ms]
    return [d.since.isoformat(), d.delivered, d.server_processes, percentiles]


async def system_status(info: strawberry.Info[Context]) -> SystemStatus:
    viewer = info.context.require_viewer()
    if viewer.role not in (Role.ADMIN, Role.SERVICE):
        error = Forbidden("system status is for admins and services")
        await refuse(info.context, "systemStatus", "system:status", error)
    services = info.context.services
    events = services.events
    status = SystemStatus(
        event_log=events.kind,
        events_emitted=Long(events.emitted_total),
        events_dropped=Long(events.dropped_total),
        consumers=[],
        lag_total=None,
        lag_read_at=None,
        lag_error=None,
        delivery=await delivery_stats(info.context),
    )
    if services.lag is None:
        # Embedded mode: the in-process log numbers an event when it applies it, so
        # the stored next offset is the log's end: lag 0 by construction.
        rows = await read.consumer_offsets(info.context.sessions)
        status.consumers = [_stored(r, Long(r.next_offset), Long(0)) for r in rows]
        status.lag_total, status.lag_read_at = Long(0), datetime.now(UTC)
        return status
    snapshot = await services.lag.read(fresh_within=1.0)
    status.lag_read_at, status.lag_error = snapshot.read_at, snapshot.error
    if snapshot.error is not None:  # what Postgres knows, with the lag unknown
        rows = await read.group_offsets(info.context.sessions, snapshot.group)
        status.consumers = [_stored(r, None, None) for r in rows]
        return status
    status.lag_total = Long(snapshot.total or 0)
    status.consumers = [
        PartitionHealth(
            group=snapshot.group,
            topic=p.topic,
            partition=p.partition,
            next_offset=Long(p.next_offset),
            high_watermark=Long(p.end_offset),
            lag=Long(p.lag),
            latency_ms=p.latency_ms,
            updated_at=p.updated_at,
        )
        for p in snapshot.partitions
    ]
    return status


def _stored(row: ConsumerOffset, high: Long | None, lag: Long | None) -> PartitionHealth:
    return PartitionHealth(
        group=row.group_id,
        topic=row.topic,
        partition=row.partition,
        next_offset=Long(row.next_offset),
        high_watermark=high,
        lag=lag,
        latency_ms=row.latency_ms,
        updated_at=utc(row.updated_at),
    )
