"""Analytics types: time series, rankings, the live snapshot and consumer health."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import strawberry
from strawberry.scalars import JSON

from schema.scalars import Long


@strawberry.enum
class Bucket(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


@strawberry.enum
class Metric(StrEnum):
    EVENTS = "events"
    ERRORS = "errors"
    ACTIVE_USERS = "active_users"


@strawberry.enum
class Breakdown(StrEnum):
    DEPARTMENT = "department"
    CLASSROOM = "classroom"


@strawberry.type
class Point:
    at: datetime
    value: Long


@strawberry.type
class Count:
    key: str
    count: Long


@strawberry.type(description="A live view of one institution, at most once a second.")
class LiveMetrics:
    at: datetime
    active_users: int = strawberry.field(description="Distinct users with events, last 5 min.")
    events_per_minute: list[Count] = strawberry.field(description="Trailing minute, by type.")
    errors_per_minute: int
    messages_delivered_per_minute: int = strawberry.field(
        description="Delivered by the node serving this subscription, trailing minute."
    )


@strawberry.type
class PartitionHealth:
    group: str
    topic: str
    partition: int
    next_offset: Long = strawberry.field(
        description="Next offset to apply, stored with the aggregates (what was applied)."
    )
    high_watermark: Long | None = strawberry.field(
        description="The broker's end offset, read now; null if the broker could not be "
        "read. In embedded mode, nextOffset."
    )
    lag: Long | None = strawberry.field(
        description="highWatermark minus nextOffset (from the log start if nothing was "
        "applied), read now; null if unknown. 0 by construction in embedded mode."
    )
    latency_ms: float | None = strawberry.field(
        description="Oldest event of the last batch: occurredAt to its aggregate written."
    )
    updated_at: datetime | None = strawberry.field(
        description="When a batch last advanced this partition; null: never."
    )


@strawberry.type
class SystemStatus:
    event_log: str
    events_emitted: Long
    events_dropped: Long
    consumers: list[PartitionHealth] = strawberry.field(
        description="Every partition of the consumer group's topics (embedded mode: the "
        "in-process log's one)."
    )
    lag_total: Long | None = strawberry.field(
        description="Events produced and not yet aggregated, all partitions; null if the "
        "broker or the database could not be read (see lagError)."
    )
    lag_read_at: datetime | None = strawberry.field(
        description="When the lag was read (at most a second before the query)."
    )
    lag_error: str | None = strawberry.field(description="Why the lag is unknown, if it is.")


@strawberry.input
class TrackActivityInput:
    type: str = strawberry.field(description="e.g. page_view; stored as activity.<type>")
    data: JSON | None = None
