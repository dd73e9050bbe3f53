"""Analytics types: time series, rankings, the live snapshot and consumer health."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import strawberry
from strawberry.scalars import JSON

from schema.delivery import DeliveryStats, DeliverySummary
from schema.enums import graphql_enum
from schema.scalars import Long


@graphql_enum(
    "The width of one point of a time series.",
    MINUTE="One minute.",
    HOUR="One hour (the default).",
    DAY="One day (UTC).",
)
class Bucket(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


@graphql_enum(
    "What a time series counts.",
    EVENTS="Events of any type (or of `eventType`).",
    ERRORS="Events that record an error.",
    ACTIVE_USERS="Distinct users with at least one event in the bucket.",
)
class Metric(StrEnum):
    EVENTS = "events"
    ERRORS = "errors"
    ACTIVE_USERS = "active_users"


@graphql_enum(
    "What to break event counts down by.",
    DEPARTMENT="By department id; events that carry none are left out.",
    CLASSROOM="By classroom id; events that carry none are left out.",
)
class Breakdown(StrEnum):
    DEPARTMENT = "department"
    CLASSROOM = "classroom"


@strawberry.type(description="One bucket of a time series.")
class Point:
    at: datetime = strawberry.field(description="Start of the bucket (UTC).")
    value: Long = strawberry.field(description="The metric's value in the bucket; 0 if none.")


@strawberry.type(description="A count for one key (an event type, a department, ...).")
class Count:
    key: str = strawberry.field(description="What is counted, e.g. `activity.page_view`.")
    count: Long = strawberry.field(description="How many.")


@strawberry.type(description="A live view of one institution, at most once a second.")
class LiveMetrics:
    at: datetime = strawberry.field(description="When this snapshot was taken (UTC).")
    active_users: int = strawberry.field(description="Distinct users with events, last 5 min.")
    events_per_minute: list[Count] = strawberry.field(description="Trailing minute, by type.")
    errors_per_minute: int = strawberry.field(description="Error events, trailing minute.")
    messages_delivered_per_minute: int = strawberry.field(
        description="Delivered by the node serving this subscription, trailing minute."
    )
    delivery: DeliverySummary | None = strawberry.field(
        default=None,
        description="Deliveries of every server process of the deployment and their "
        "latency, current and previous minute; null if the numbers cannot be read now.",
    )


@strawberry.type(description="How far the analytics consumers are along one topic partition.")
class PartitionHealth:
    group: str = strawberry.field(description="The Kafka consumer group.")
    topic: str = strawberry.field(description="The topic.")
    partition: int = strawberry.field(description="The partition number.")
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


@strawberry.type(description="The event pipeline's health, for admins and services.")
class SystemStatus:
    event_log: str = strawberry.field(
        description="Which event log this server writes to: `kafka`, or `memory` (embedded)."
    )
    events_emitted: Long = strawberry.field(
        description="Events this server process handed to the log since it started."
    )
    events_dropped: Long = strawberry.field(
        description="Events this server process dropped (buffer full) since it started."
    )
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
    delivery: DeliveryStats | None = strawberry.field(
        default=None,
        description="Deliveries of every server process of the deployment and their "
        "latency, per minute over the last hour; null if the numbers cannot be read now.",
    )


@strawberry.input(description="A frontend interaction to record as an analytics event.")
class TrackActivityInput:
    type: str = strawberry.field(
        description="e.g. page_view; stored as activity.<type> (1-48 of a-z, 0-9, _ . -)."
    )
    data: JSON | None = strawberry.field(
        default=None,
        description="A JSON object with details (at most 8 KB as JSON); {} if omitted.",
    )
