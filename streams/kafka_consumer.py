"""``edumatrix consume``: one member of the analytics consumer group.

Each ``getmany()`` batch is applied with its offsets in one Postgres transaction
(``db/analytics_write.py``). Postgres, not Kafka, holds the truth about what was
applied: on every partition assignment the consumer seeks to the offsets stored
there. Kafka offsets are committed after the database commit, for tooling only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from functools import partial
from typing import Any

import structlog
from aiokafka import (
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from sqlalchemy import select

from db.analytics_models import ConsumerOffset
from streams.aggregator import Aggregator, RawRecord
from streams.backoff import Backoff
from streams.broker_retry import describe, is_transient
from streams.dead_letter import DEFAULT_VALUE_BYTES, KafkaDeadLetters
from streams.events import Topics
from streams.kafka_group import GroupConsumer
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
        dead_letter_value_bytes: int = DEFAULT_VALUE_BYTES,
        dead_letter_deadline: float = 15.0,
        retry_backoff: float = 0.2,
        retry_backoff_max: float = 5.0,
        leave_group: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.aggregator = aggregator
        self.partitions = partitions
        self.batch_size = batch_size
        self._stop = asyncio.Event()
        self._backoff = Backoff(retry_backoff, retry_backoff_max)
        self._consuming = False  # joined and in _loop: stop() lets the batch finish
        # A consumer that was started cannot start again: one per connection attempt.
        self._make_consumer = partial(
            GroupConsumer,  # leaves the group on close, or not (tansu): kafka_group.py
            leave_group=leave_group,
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
        self._consumer = self._make_consumer()
        self._consumer_spent = False  # started (or tried to): the next attempt needs a new one
        self._producer_started = False
        # Dead letters only. They are bounded (streams/dead_letter.py), so the default
        # 1 MB max_request_size always fits; request_timeout_ms bounds one attempt.
        # aiokafka's 16 KB batches held one or two letters each, one round trip per
        # batch: 512 KB batches carry a whole consumer batch of letters in a few.
        # No linger: a batch's letters are all queued before the first is awaited,
        # so lingering only added 5 ms to every batch that had a bad record.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=0,
            max_batch_size=512 * 1024,
            request_timeout_ms=max(1000, int(dead_letter_deadline * 1000)),
        )
        aggregator.dead_letter = KafkaDeadLetters(
            self._producer,
            topics.dead_letter,
            max_value_bytes=dead_letter_value_bytes,
            deadline=dead_letter_deadline,
        )

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

    async def run(self) -> None:
        """Consume until :meth:`stop`, however long the broker is away.

        A broker unreachable at start, or lost later (an error escaping the loop),
        is retried forever with capped, jittered backoff, each time with a new
        consumer that seeks to the offsets in the database again. Errors no retry
        can fix end the run (the process exits non-zero for its supervisor).
        """
        try:
            while not self._stop.is_set():
                try:
                    await self._unless_stopped_while_connecting(self._attempt())
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    if self._stop.is_set():
                        # A stop that raced a failed connect: the offsets live in
                        # the database, so there is nothing to retry for (exit 0).
                        break
                    delay = self._backoff.next()
                    log.warning(
                        "consumer.broker_unavailable",
                        error=describe(exc),
                        attempt=self._backoff.attempt,
                        retry_in=round(delay, 3),
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            if not self._consumer_spent:
                await self._consumer.stop()  # never started; stop() keeps aiokafka quiet
            await self._producer.stop()

    async def _attempt(self) -> None:
        """One connection: topics, the dead-letter producer (started once, it
        reconnects by itself), a fresh consumer, then the loop."""
        await ensure_topics(
            self.bootstrap, [*self.topics.sources, self.topics.dead_letter], self.partitions
        )
        if not self._producer_started:
            await self._producer.start()
            self._producer_started = True
        if self._consumer_spent:
            self._consumer = self._make_consumer()
        consumer, self._consumer_spent = self._consumer, True
        try:
            consumer.subscribe(self.topics.sources, listener=_SeekToStored(self))
            await consumer.start()
            if self._backoff.attempt:
                log.info("consumer.broker_available", attempts=self._backoff.attempt)
            self._backoff.reset()
            self._consuming = True
            await self._loop()
        finally:
            self._consuming = False
            await consumer.stop()

    async def _unless_stopped_while_connecting(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``; a stop() while it still connects cancels it (connecting to a
        hung broker takes a request timeout, and there is no batch to finish)."""
        task = asyncio.create_task(work)
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not self._consuming:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return
            await task  # consuming: the loop sees the stop after its batch
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()

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
