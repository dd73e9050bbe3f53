"""The deployment's delivery numbers: every server process's deliveries and their
latency, per minute (``streams/delivery_stats.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Self

import strawberry

from schema.scalars import Long
from streams.delivery_stats import MinuteStats, Readout


def _minute_at(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


@strawberry.type(
    description=(
        "Delivery latency percentiles, publish (sequencer clock) to hand-off to the "
        "subscriber's connection, estimated from bucket counts the way Prometheus's "
        "histogram_quantile does: linear inside the bucket the rank falls in (buckets "
        "of edumatrix_delivery_latency_seconds; above 2.5 s it says 2500). Each "
        "delivery counts once, a message sent to 1,000 subscribers 1,000 times."
    )
)
class LatencyPercentiles:
    p50_ms: float = strawberry.field(description="Median, in milliseconds.")
    p95_ms: float = strawberry.field(description="95th percentile, in milliseconds.")
    p99_ms: float = strawberry.field(description="99th percentile, in milliseconds.")

    @classmethod
    def of(cls, stats: MinuteStats) -> Self | None:
        p50, p95, p99 = (stats.percentile_ms(q) for q in (0.5, 0.95, 0.99))
        if p50 is None or p95 is None or p99 is None:
            return None
        return cls(p50_ms=p50, p95_ms=p95, p99_ms=p99)


@strawberry.type(
    description=(
        "Messages every server process of the deployment handed to subscribers in the "
        "current and the previous minute (the window of eventsPerMinute)."
    )
)
class DeliverySummary:
    since: datetime = strawberry.field(
        description="Start of the window: the previous minute's start (UTC)."
    )
    delivered: Long = strawberry.field(
        description="Deliveries in the window, all processes (a message to n subscribers "
        "is n deliveries; what a process had not flushed yet, at most ~1 s, is not in)."
    )
    latency: LatencyPercentiles | None = strawberry.field(
        description="Their latency; null when nothing was delivered in the window."
    )
    server_processes: int = strawberry.field(
        description="Server processes that reported within the last minute (each reports "
        "about once a second, delivering or not); a stopped or killed one drops out a "
        "minute after its last report."
    )

    @classmethod
    def of(cls, readout: Readout) -> Self:
        window = readout.window(2)
        return cls(
            since=_minute_at(window.minute),
            delivered=Long(window.delivered),
            latency=LatencyPercentiles.of(window),
            server_processes=readout.processes,
        )


@strawberry.type(description="One minute of the deployment's deliveries.")
class DeliveryMinute:
    at: datetime = strawberry.field(description="Start of the minute (UTC).")
    processes: int = strawberry.field(
        description="Server processes that reported during the minute. 0 with delivered "
        "null: none did (a gap: unknown, not zero)."
    )
    delivered: Long | None = strawberry.field(
        description="Deliveries in the minute, all processes; null when no process reported."
    )
    latency: LatencyPercentiles | None = strawberry.field(
        description="Their latency; null when nothing was delivered in the minute."
    )


@strawberry.type(description="The deployment's deliveries and their latency, per minute.")
class DeliveryStats:
    current: DeliverySummary = strawberry.field(
        description="The current and the previous minute, as liveMetrics.delivery."
    )
    minutes: list[DeliveryMinute] = strawberry.field(
        description="The last 60 complete minutes and the current one, oldest first, "
        "one entry per minute (gaps included, with processes 0)."
    )

    @classmethod
    def of(cls, readout: Readout) -> Self:
        minutes = []
        for minute in range(readout.first, readout.last + 1):
            stats = readout.minutes.get(minute)
            known = stats is not None and (stats.processes > 0 or stats.delivered > 0)
            minutes.append(
                DeliveryMinute(
                    at=_minute_at(minute),
                    processes=stats.processes if stats is not None else 0,
                    delivered=Long(stats.delivered) if stats is not None and known else None,
                    latency=LatencyPercentiles.of(stats) if stats is not None else None,
                )
            )
        return cls(current=DeliverySummary.of(readout), minutes=minutes)
