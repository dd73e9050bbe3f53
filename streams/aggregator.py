"""The aggregator both event log modes feed: decode, dead-letter, apply, alert.

    ConsumerError                      policy on the class, not in messages
    └── TransientStoreError  retriable the database was unreachable or a
                                       transaction lost a race: retry the batch

The Kafka consumer (``streams/kafka_consumer.py``) and the in-process log
(``streams/memory_events.py``) hand raw records to :meth:`Aggregator.handle`;
everything after that is one code path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from db.analytics_write import Applied, Consumed, Thresholds, apply_batch, stored_offsets
from db.engine import Sessions
from streams.bus import Bus
from streams.events import EventError, decode_event

log = structlog.get_logger(__name__)

# Postgres SQLSTATEs worth retrying: serialization failure, deadlock, too many conns.
_RETRY_SQLSTATES = {"40001", "40P01", "53300", "57P01", "57P03"}


class ConsumerError(Exception):
    retriable = False


class TransientStoreError(ConsumerError):
    retriable = True


def classify(exc: BaseException) -> ConsumerError | None:
    """Wrap store errors that a retry can fix; None means a bug or a hard failure."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return TransientStoreError(repr(exc))
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if exc.connection_invalidated or code in _RETRY_SQLSTATES:
            return TransientStoreError(repr(exc))
    return None


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


DeadLetter = Callable[[RawRecord, str], Awaitable[None]]


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.applied = Counter(
            "edumatrix_events_aggregated_total", "Events applied to aggregates", registry=r
        )
        self.skipped = Counter(
            "edumatrix_events_replayed_total",
            "Records skipped because their offset was already applied",
            registry=r,
        )
        self.dead = Counter(
            "edumatrix_events_dead_lettered_total", "Invalid events sent to dead letter", registry=r
        )
        self.retries = Counter(
            "edumatrix_aggregate_retries_total", "Batches retried after a store error", registry=r
        )
        self.latency = Histogram(
            "edumatrix_aggregation_latency_seconds",
            "Event occurredAt to its aggregate committed",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.lag = Gauge(
            "edumatrix_consumer_lag",
            "High watermark minus next offset to apply",
            ["topic", "partition"],
            registry=r,
        )


class Aggregator:
    """Apply batches exactly once, with capped jittered retries, and raise alerts."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        group: str,
        thresholds: Thresholds,
        bus: Bus | None = None,
        dead_letter: DeadLetter | None = None,
        registry: CollectorRegistry | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.sessions = sessions
        self.group = group
        self.thresholds = thresholds
        self.bus = bus
        self.dead_letter = dead_letter
        self.metrics = AggregatorMetrics(registry)
        self.max_backoff = max_backoff

    async def handle(
        self, batch: list[RawRecord], high_watermarks: dict[tuple[str, int], int] | None = None
    ) -> Applied:
        consumed: list[Consumed] = []
        invalid: list[tuple[RawRecord, str]] = []
        for record in batch:
            try:
                event = decode_event(record.value)
            except EventError as exc:
                invalid.append((record, str(exc)))
                event = None
            consumed.append(Consumed(record.topic, record.partition, record.offset, event))
        if invalid:
            # Replayed records were dead-lettered before; a crash between this send
            # and the commit below can still repeat one (at-least-once dead letters).
            parts = {(r.topic, r.partition) for r, _ in invalid}
            applied_upto = await stored_offsets(self.sessions, self.group, parts)
            for record, reason in invalid:
                if record.offset >= applied_upto.get((record.topic, record.partition), 0):
                    await self._dead(record, reason)
        return await self.apply(consumed, high_watermarks)

    async def apply(
        self,
        consumed: list[Consumed],
        high_watermarks: dict[tuple[str, int], int] | None = None,
    ) -> Applied:
        """Apply records already decoded: the in-process log's events were validated
        when they were built, and a JSON round trip per event cost more than the
        aggregation itself (a tenth of a core during a burst of handshakes)."""
        applied = await self._apply_retrying(consumed, high_watermarks)
        now = time.time()
        for event in applied.events:
            self.metrics.latency.observe(max(0.0, now - event.occurred_at.timestamp()))
        self.metrics.applied.inc(len(applied.events))
        self.metrics.skipped.inc(applied.skipped)
        for (topic, part), hw in (high_watermarks or {}).items():
            ends = [r.offset + 1 for r in consumed if (r.topic, r.partition) == (topic, part)]
            if ends:
                self.metrics.lag.labels(topic, str(part)).set(max(0, hw - max(ends)))
        await self._publish_alerts(applied)
        return applied

    async def _dead(self, record: RawRecord, reason: str) -> None:
        self.metrics.dead.inc()
        log.warning("events.invalid", topic=record.topic, offset=record.offset, reason=reason)
        if self.dead_letter is not None:
            await self.dead_letter(record, reason)

    async def _apply_retrying(
        self, consumed: list[Consumed], high_watermarks: dict[tuple[str, int], int] | None
    ) -> Applied:
        attempt = 0
        while True:
            try:
                return await apply_batch(
                    self.sessions,
                    self.group,
                    consumed,
                    high_watermarks=high_watermarks,
                    thresholds=self.thresholds,
                )
            except Exception as exc:
                transient = classify(exc)
                if transient is None or not transient.retriable:
                    raise
                attempt += 1
                delay = min(self.max_backoff, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                self.metrics.retries.inc()
                log.warning("aggregate.retry", attempt=attempt, delay=delay, error=str(transient))
                await asyncio.sleep(delay)

    async def _publish_alerts(self, applied: Applied) -> None:
        if self.bus is None:
            return
        for alert in applied.alerts:
            channel = f"institution:{alert.institution_id}:role:admin"
            data = {
                "alert": {
                    "rule": alert.rule,
                    "subject": alert.subject,
                    "minute": alert.bucket.isoformat(),
                    "value": alert.value,
                    "threshold": alert.threshold,
                }
            }
            try:
                await self.bus.publish(channel, "analytics.alert", data)
            except Exception as exc:  # the aggregate is committed; an alert is best effort
                log.error("alerts.publish_failed", channel=channel, error=repr(exc))
