"""The aggregator both event log modes feed: decode, dead-letter, apply, alert.

    ConsumerError                      policy on the class, not in messages
    └── TransientStoreError  retriable the database was unreachable or a
                                       transaction lost a race: retry the batch

The Kafka consumer (``streams/kafka_consumer.py``) and the in-process log
(``streams/memory_events.py``) hand raw records to :meth:`Aggregator.handle`;
everything after that is one code path.

No record can stop the consumer: one that fails to decode or validate, or whose
write fails on its own (found by splitting a failing batch), becomes a dead letter
(``streams/dead_letter.py``), and its offset is committed with the batch, even
when the dead letter itself could not be written (then it is counted as parked).
A store failure that is not one record's is never dead-lettered: transient ones
are retried, others stop the batch.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from db.analytics_write import Applied, Consumed, Thresholds, apply_batch, stored_offsets
from db.engine import Sessions
from streams.bus import Bus
from streams.dead_letter import DeadLetter, DeadLetterSink
from streams.events import REASONS, EventError, decode_event

log = structlog.get_logger(__name__)
T = TypeVar("T")

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


def triage(batch: list[RawRecord]) -> tuple[list[Consumed], list[DeadLetter]]:
    """Decode every record: all of them as :class:`Consumed` (``event`` None for a
    bad one, so its offset still advances) and a dead letter per bad one."""
    consumed: list[Consumed] = []
    letters: list[DeadLetter] = []
    for record in batch:
        try:
            event = decode_event(record.value)
        except EventError as exc:
            letters.append(DeadLetter(record, exc.code, str(exc)))
            event = None
        consumed.append(Consumed(record.topic, record.partition, record.offset, event))
    return consumed, letters


def _merged(first: Applied, rest: Applied) -> Applied:
    return Applied(
        events=first.events + rest.events,
        skipped=first.skipped + rest.skipped,
        alerts=first.alerts + rest.alerts,
        institutions=first.institutions | rest.institutions,
    )


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
            "edumatrix_events_dead_lettered_total",
            "Dead letters written to the dead-letter topic",
            registry=r,
        )
        self.invalid = Counter(
            "edumatrix_events_invalid_total",
            "Records that could not be aggregated, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.invalid.labels(reason)
        self.parked = Counter(
            "edumatrix_dead_letters_parked_total",
            "Dead letters that could not be written (logged; their offsets still committed)",
            registry=r,
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
        # edumatrix_consumer_lag is streams/kafka_lag.py's: broker end offsets minus the
        # stored offsets, read every second or two. Set here, after each batch, from the
        # fetch's high watermark, it was absent until a partition's first batch and
        # under-reported a backlog (11.6k against a true 49k).


class Aggregator:
    """Apply batches exactly once, with capped jittered retries, and raise alerts."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        group: str,
        thresholds: Thresholds,
        bus: Bus | None = None,
        dead_letter: DeadLetterSink | None = None,
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
        consumed, letters = triage(batch)
        if letters:
            # Replayed records were dead-lettered before; a crash between this send
            # and the commit below can still repeat one (at-least-once dead letters).
            parts = {(d.record.topic, d.record.partition) for d in letters}
            applied_upto = await self._retrying(
                lambda: stored_offsets(self.sessions, self.group, parts)
            )
            await self._dead_letters(
                [
                    d
                    for d in letters
                    if d.record.offset >= applied_upto.get((d.record.topic, d.record.partition), 0)
                ]
            )
        return await self._isolating(batch, consumed, high_watermarks)

    async def _isolating(
        self,
        batch: list[RawRecord],
        consumed: list[Consumed],
        high_watermarks: dict[tuple[str, int], int] | None,
        depth: int = 0,
    ) -> Applied:
        """Apply ``consumed``; if that fails for a reason a retry cannot fix, split the
        batch in halves until the record that fails alone is found, dead-letter it and
        move its offset on. A record's offsets stay in order: a half is committed
        before the next one starts. When nothing can be written, not even the offset
        of a record without an event, the store is at fault: that error is raised."""
        try:
            return await self.apply(consumed, high_watermarks)
        except Exception as exc:
            if depth == 0:
                log.error("aggregate.batch_failed", records=len(consumed), error=repr(exc))
            if len(consumed) > 1:
                mid = len(consumed) // 2
                first = await self._isolating(
                    batch[:mid], consumed[:mid], high_watermarks, depth + 1
                )
                rest = await self._isolating(
                    batch[mid:], consumed[mid:], high_watermarks, depth + 1
                )
                return _merged(first, rest)
            one = consumed[0]
            if one.event is None:
                raise
            # Is it the record or the store? The same transaction without the event,
            # for the offset just before it (skipped, or a gap), moves nothing past it;
            # if even that fails, the store is at fault and this raises.
            await self._apply_retrying([replace(one, offset=one.offset - 1, event=None)], None)
            reason = f"aggregation failed: {type(exc).__name__}: {exc}"
            # Sent before the offset moves past the record, so it is never lost (a
            # crash before the commit below repeats it: at-least-once, like the rest).
            await self._dead_letters([DeadLetter(batch[0], "aggregate_failed", reason[:500])])
            return await self.apply([replace(one, event=None)], high_watermarks)

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
        await self._publish_alerts(applied)
        return applied

    async def _dead_letters(self, letters: list[DeadLetter]) -> None:
        """Count, log (once per batch: a flood of garbage must not flood the log) and
        send ``letters``; whatever could not be sent is counted and logged as parked,
        never raised: the batch's offsets are committed either way."""
        if not letters:
            return
        reasons = Tally(d.code for d in letters)
        for code, count in reasons.items():
            self.metrics.invalid.labels(code).inc(count)
        first = letters[0]
        log.warning(
            "events.invalid",
            count=len(letters),
            reasons=dict(reasons),
            first=first.source,
            reason=first.reason,
        )
        parked: list[DeadLetter] = list(letters)
        if self.dead_letter is not None:
            try:
                parked = await self.dead_letter.send(letters)
            except Exception as exc:  # a sink bug must not become a crash loop either
                log.error("dead_letter.failed", count=len(letters), error=repr(exc))
        self.metrics.dead.inc(len(letters) - len(parked))
        if parked:
            self.metrics.parked.inc(len(parked))
            log.error(
                "dead_letter.parked",
                count=len(parked),
                sources=[d.source for d in parked[:50]],
                reasons=dict(Tally(d.code for d in parked)),
            )

    async def _apply_retrying(
        self, consumed: list[Consumed], high_watermarks: dict[tuple[str, int], int] | None
    ) -> Applied:
        return await self._retrying(
            lambda: apply_batch(
                self.sessions,
                self.group,
                consumed,
                high_watermarks=high_watermarks,
                thresholds=self.thresholds,
            )
        )

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run a store operation, retrying what :func:`classify` calls transient."""
        attempt = 0
        while True:
            try:
                return await attempt_once()
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
