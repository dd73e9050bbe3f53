"""``edumatrix consume``: one member of the analytics consumer group.

Each ``getmany()`` batch is applied with its offsets in one Postgres transaction
(``db/analytics_write.py``). Postgres, not Kafka, holds the truth about what was
applied: on every partition assignment the consumer seeks to the offsets stored
there. Kafka offsets are committed after the database commit, for tooling only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from sqlalchemy import select

from db.analytics_models import ConsumerOffset
from streams.aggregator import Aggregator, RawRecord
from streams.events import Topics
from streams.kafka_log import ensure_topics

log = structlog.get_logger(__name__)


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, continue from the offsets the database says were applied."""

    def __init__(self, owner: AnalyticsConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        log.info("consumer.revoked", partitions=sorted(f"{t.topic}/{t.partition}" for t in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.seek_to_stored(list(assigned))


class AnalyticsConsumer:
    """Consume the event topics into the aggregates until stopped."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        aggregator: Aggregator,
        *,
        partitions: int,
        batch_size: int,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.aggregator = aggregator
        self.partitions = partitions
        self.batch_size = batch_size
        self._stop = asyncio.Event()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=aggregator.group,
            client_id="edumatrix-consume",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 5),
            rebalance_timeout_ms=rebalance_timeout_ms,
            max_poll_interval_ms=max(rebalance_timeout_ms, 60_000),
            # aiokafka's default (500 ms) is how long the broker may hold an empty
            # fetch; tansu holds it the whole time even when events arrive, which put
            # p99 event -> aggregate at ~490 ms (bench/EVENTS.md). 50 ms: p99 ~50 ms.
            fetch_max_wait_ms=50,
        )
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        aggregator.dead_letter = self.dead_letter

    def stop(self) -> None:
        """Finish the current batch, then leave the group (SIGTERM handler)."""
        self._stop.set()

    async def seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        if not assigned:
            return
        async with self.aggregator.sessions() as session:
            rows = await session.execute(
                select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset)
                .where(ConsumerOffset.group_id == self.aggregator.group)
                .where(ConsumerOffset.topic.in_({t.topic for t in assigned}))
            )
            stored = {(t, p): n for t, p, n in rows}
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)
        log.info(
            "consumer.assigned", partitions=sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )

    async def dead_letter(self, record: RawRecord, reason: str) -> None:
        headers = [
            ("reason", reason.encode()[:1000]),
            ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        body = {
            "reason": reason,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "value": (record.value or b"").decode("utf-8", "replace"),
        }
        await self._producer.send_and_wait(
            self.topics.dead_letter, json.dumps(body).encode(), headers=headers
        )

    async def run(self) -> None:
        await ensure_topics(
            self.bootstrap, [*self.topics.sources, self.topics.dead_letter], self.partitions
        )
        await self._producer.start()
        try:
            self._consumer.subscribe(self.topics.sources, listener=_SeekToStored(self))
            await self._consumer.start()
            try:
                await self._loop()
            finally:
                await self._consumer.stop()
        finally:
            await self._producer.stop()

    async def _loop(self) -> None:
        log.info("consumer.started", group=self.aggregator.group, topics=self.topics.sources)
        while not self._stop.is_set():
            batches = await self._consumer.getmany(timeout_ms=200, max_records=self.batch_size)
            records = [
                RawRecord(tp.topic, tp.partition, m.offset, m.value)
                for tp, messages in batches.items()
                for m in messages
            ]
            if not records:
                continue
            highs = {}
            for tp in batches:
                high = self._consumer.highwater(tp)
                if high is not None:
                    highs[(tp.topic, tp.partition)] = high
            await self.aggregator.handle(records, highs)
            await self._commit_kafka(batches)

    async def _commit_kafka(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Informational only (lag tools read it); the database decides where we resume."""
        ready = {tp: messages[-1].offset + 1 for tp, messages in batches.items() if messages}
        try:
            await self._consumer.commit(ready)
        except KafkaError as exc:  # e.g. a rebalance started; the next batch re-commits
            log.info("consumer.kafka_commit_skipped", error=repr(exc))
