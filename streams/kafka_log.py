"""Cluster mode's event log: an aiokafka producer, keyed by institution.

``acks="all"`` so an accepted send survives a broker failover. The producer is
not idempotent (the test broker does not support it): a retried send may write
a duplicate, which consumers count twice only if it carries a new offset, the
usual at-least-once producer trade-off, documented in docs/events.md.
"""

from __future__ import annotations

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from streams.events import Event, EventLog, Topics

log = structlog.get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the topics that are missing; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="edumatrix-admin")
    await admin.start()
    try:
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
    kind = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        partitions: int,
        buffer_size: int,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(buffer_size=buffer_size, registry=registry)
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions
        self._producer: AIOKafkaProducer | None = None

    async def _open(self) -> None:
        await ensure_topics(
            self.bootstrap, [*self.topics.sources, self.topics.dead_letter], self.partitions
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, client_id="edumatrix-api"
        )
        await self._producer.start()

    async def _send(self, batch: list[Event]) -> None:
        if self._producer is None:
            raise RuntimeError("event log is not started")
        futures = [
            await self._producer.send(
                self.topics.for_type(e.type), e.encode(), key=e.institution_id.encode()
            )
            for e in batch
        ]
        for future in futures:
            await future

    async def _shut(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
