"""Cluster mode's event log: an aiokafka producer, keyed by institution.

``acks="all"`` so an accepted send survives a broker failover. The server never
waits for the broker: it starts and serves while Kafka is away, events wait in
the bounded buffer (streams/events.py) and the sender connects, and re-sends
failed events, with capped, jittered backoff, for as long as it takes.

At least once, not exactly once: the producer cannot be idempotent (the test
broker does not support it), and a send that timed out may still have been
written (a hung broker processes the request when it resumes). Such events are
sent again and may be counted twice; ``edumatrix_events_resent_total{reason=
"unconfirmed"}`` counts them, an upper bound on the duplicates (docs/events.md).
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from streams.broker_retry import describe, is_transient, maybe_written
from streams.events import Event, EventLog, Topics, Unsent

log = structlog.get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap: str, names: list[str], partitions: int, *, request_timeout_ms: int = 40_000
) -> None:
    """Create the topics that are missing; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="edumatrix-admin",
        request_timeout_ms=request_timeout_ms,
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing]
        )
        for topic, code, message in getattr(response, "topic_errors", []):
            if code not in (0, TOPIC_ALREADY_EXISTS):  # another process may have won the race
                raise RuntimeError(f"cannot create topic {topic!r}: {message} ({code})")
        log.info("kafka.topics_created", topics=missing, partitions=partitions)
    finally:
        await admin.close()


class KafkaEventLog(EventLog):
    """Events to Kafka; the broker may be away at start or at any time later.

    The sender connects (topics, then the producer) and, after a failed send,
    first waits until the broker answers again (the same topic check), backing
    off each time. Only then does it send the failed events again: re-sending
    into a hung broker would queue one more copy per request timeout on its
    sockets.
    """

    kind = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        partitions: int,
        buffer_size: int,
        registry: CollectorRegistry | None = None,
        request_timeout_ms: int = 40_000,
        retry_backoff: float = 0.2,
        retry_backoff_max: float = 5.0,
    ) -> None:
        super().__init__(
            buffer_size=buffer_size,
            registry=registry,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
        )
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions
        self.request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    async def _check(self, *, failing: bool) -> str | None:
        if self._producer is not None and not failing:
            return None
        try:
            # Connecting, or the probe after a failed send: the broker answers again,
            # and the topics exist (a replaced broker may have come back without them).
            await ensure_topics(
                self.bootstrap,
                [*self.topics.sources, self.topics.dead_letter],
                self.partitions,
                request_timeout_ms=self.request_timeout_ms,
            )
            if self._producer is None:
                await self._start_producer()
        except Exception as exc:  # any failure: the sender waits and asks again
            what = "cannot connect" if self._producer is None else "broker not answering"
            return f"{what}: {describe(exc)}"
        return None

    async def _start_producer(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            client_id="edumatrix-api",
            request_timeout_ms=self.request_timeout_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        log.info("events.kafka_connected", bootstrap=self.bootstrap)

    async def _send(self, batch: list[Event]) -> Unsent | None:
        producer = self._producer
        if producer is None:
            return Unsent(batch, error="not connected")
        handed: list[tuple[Event, asyncio.Future[object]]] = []
        rejected: list[tuple[Event, BaseException]] = []
        not_taken: list[Event] = []
        first: BaseException | None = None
        for i, event in enumerate(batch):
            try:
                future = await producer.send(
                    self.topics.for_type(event.type),
                    event.encode(),
                    key=event.institution_id.encode(),
                )
            except Exception as exc:  # not taken by the producer: certainly not written
                if not is_transient(exc):
                    rejected.append((event, exc))
                    continue
                not_taken, first = batch[i:], exc  # e.g. no metadata yet: all go again
                break
            handed.append((event, future))
        results = await asyncio.gather(*(f for _, f in handed), return_exceptions=True)
        again: list[Event] = []
        maybe = 0
        for (event, _), result in zip(handed, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if not is_transient(result):
                rejected.append((event, result))
                continue
            again.append(event)
            maybe += maybe_written(result)
            first = first or result
        if rejected:
            # A failure no retry can fix (e.g. authorization): counted, not retried.
            self._count_dropped(len(rejected))
            log.error("events.rejected", count=len(rejected), error=repr(rejected[0][1]))
        again += not_taken
        if not again:
            return None
        return Unsent(again, maybe, describe(first) if first else "")

    async def _shut(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
