"""The Kafka path end to end: real tansu broker, real Postgres, consumers as processes.

Exactness is checked against counts computed independently from the produced
events, after normal runs, kill -9 restarts and a group member's death.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    aggregated,
    consumer_env,
    expected,
    make_events,
    migrate,
    new_prefix,
    produce,
    topics_for,
    total,
    wait_until,
)
from tests.kafka_broker import ConsumerProcess

pytestmark = pytest.mark.postgres


def assert_exact(pg_url: str, events: list[dict[str, object]]) -> None:
    counts, users = asyncio.run(aggregated(pg_url))
    want_counts, want_users = expected(events)  # type: ignore[arg-type]
    assert counts == want_counts
    assert users == want_users


def test_ten_thousand_events_aggregate_exactly(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix)
    migrate(tmp_path, env)
    events = make_events(10_000, seed=1)
    asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
    consumer = ConsumerProcess(tmp_path, env, "a").start()
    try:
        wait_until(lambda: total(pg_url) >= 10_000, timeout=60, what="10k", log=consumer.log)
        assert_exact(pg_url, events)
    finally:
        consumer.stop()


def test_kill_9_mid_batch_then_restart_is_exact(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix, consumer_batch_size="50")
    migrate(tmp_path, env)
    events = make_events(4_000, seed=2)
    asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
    first = ConsumerProcess(tmp_path, env, "first").start()
    try:
        wait_until(lambda: total(pg_url) > 0, timeout=60, what="progress", log=first.log)
        first.kill()
        assert total(pg_url) < len(events), "consumer finished before the kill; raise the count"
        second = ConsumerProcess(tmp_path, env, "second").start()
        try:
            wait_until(lambda: total(pg_url) >= 4_000, timeout=60, what="all", log=second.log)
            assert_exact(pg_url, events)
        finally:
            second.stop()
    finally:
        first.stop()


def test_group_member_killed_other_takes_over(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix, consumer_batch_size="50")
    migrate(tmp_path, env)
    a = ConsumerProcess(tmp_path, env, "a").start()
    b = ConsumerProcess(tmp_path, env, "b").start()
    try:
        events = make_events(4_000, seed=3)
        asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
        wait_until(lambda: total(pg_url) > 0, timeout=60, what="progress", log=a.log)
        a.kill()
        wait_until(lambda: total(pg_url) >= 4_000, timeout=90, what="takeover", log=b.log)
        assert_exact(pg_url, events)
        assert b.alive()
    finally:
        a.stop()
        b.stop()


def test_malformed_events_go_to_dead_letter(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    prefix = new_prefix()
    topics = topics_for(prefix)
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix)
    migrate(tmp_path, env)
    good = make_events(300, seed=4)
    bad = [
        b"not json",
        json.dumps({"type": "activity.x", "userId": "u1"}).encode(),  # no institutionId
        json.dumps({**good[0], "occurredAt": "yesterday"}).encode(),
    ]

    async def produce_bad() -> None:
        await produce(kafka_bootstrap, topics, good[:150])
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for raw in bad:
                await producer.send_and_wait(topics.analytics, raw, key=b"northwood")
        finally:
            await producer.stop()
        await produce(kafka_bootstrap, topics, good[150:])

    async def dead_letters() -> list[dict[str, object]]:
        consumer = AIOKafkaConsumer(
            topics.dead_letter, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        found: list[dict[str, object]] = []
        try:
            for _ in range(50):
                batch = await consumer.getmany(timeout_ms=200)
                found += [json.loads(m.value) for ms in batch.values() for m in ms]
                if len(found) >= len(bad):
                    break
        finally:
            await consumer.stop()
        return found

    asyncio.run(produce_bad())
    consumer = ConsumerProcess(tmp_path, env, "dlq").start()
    try:
        wait_until(lambda: total(pg_url) >= 300, timeout=60, what="good events", log=consumer.log)
        assert_exact(pg_url, good)
        letters = asyncio.run(dead_letters())
        assert sorted(str(d["value"]) for d in letters) == sorted(r.decode() for r in bad)
        assert all(d["reason"] and d["topic"] == topics.analytics for d in letters)
        assert consumer.alive()
    finally:
        consumer.stop()


def test_events_from_librdkafka_producer(tmp_path: Path, pg_url: str, kafka_bootstrap: str) -> None:
    from confluent_kafka import Producer

    prefix = new_prefix()
    topics = topics_for(prefix)
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix)
    migrate(tmp_path, env)
    asyncio.run(produce(kafka_bootstrap, topics, []))  # creates the topics
    events = make_events(500, seed=5)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for e in events:
        producer.produce(
            topics.for_type(str(e["type"])), json.dumps(e), key=str(e["institutionId"])
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    consumer = ConsumerProcess(tmp_path, env, "rdkafka").start()
    try:
        wait_until(lambda: total(pg_url) >= 500, timeout=60, what="rdkafka", log=consumer.log)
        assert_exact(pg_url, events)
    finally:
        consumer.stop()
