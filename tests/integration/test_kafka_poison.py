"""Poison records against a real broker, Postgres and ``edumatrix consume`` processes.

An operator test found that one 2 MB record (or 400 KB of "é") stopped the
analytics for good: its dead letter, a full copy, was over the producer's 1 MB
limit, the error escaped, every restart and every other group member died on the
same record. Timestamps at the datetime limits did the same through an
OverflowError. Here each kind sits between good events: the consumer must stay up,
count every good event exactly and write one bounded dead letter per bad record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from db.analytics_write import Thresholds
from db.engine import create_engine, make_sessionmaker
from db.migrate import upgrade
from streams.aggregator import Aggregator, RawRecord
from streams.dead_letter import KafkaDeadLetters
from streams.events import Topics
from tests.integration.kafka_helpers import (
    consumer_env,
    make_events,
    migrate,
    new_prefix,
    produce,
    topics_for,
    total,
    wait_until,
)
from tests.integration.test_kafka_analytics import assert_exact
from tests.kafka_broker import ConsumerProcess
from tests.services import free_port

pytestmark = pytest.mark.postgres

LIMIT = 4096  # EDUMATRIX_DEAD_LETTER_VALUE_BYTES for these consumers


def limit_event(when: str) -> bytes:
    return json.dumps({"type": "a.b", "institutionId": "x", "occurredAt": when}).encode()


def poison_event(good: dict[str, Any]) -> bytes:
    """Valid, but the test's trigger makes its write fail: aggregate_failed."""
    return json.dumps({**good, "id": "poison", "institutionId": "poison"}).encode()


async def produce_interleaved(
    bootstrap: str, topics: Topics, good: list[dict[str, Any]], bad: list[bytes]
) -> list[tuple[bytes, int]]:
    """Good events in chunks with one bad record after each chunk, all bad records on
    one partition of the analytics topic; returns (bad value, offset) pairs."""
    chunks = [good[i :: len(bad) + 1] for i in range(len(bad) + 1)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    await producer.start()
    placed = []
    try:
        for chunk, raw in zip(chunks, [*bad, None], strict=True):
            await produce(bootstrap, topics, chunk)
            if raw is not None:
                sent = await producer.send_and_wait(topics.analytics, raw, partition=0)
                placed.append((raw, sent.offset))
    finally:
        await producer.stop()
    return placed


async def read_topic(bootstrap: str, topic: str, want: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list[Any] = []
    try:
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            found += [m for ms in batch.values() for m in ms]
            if len(found) >= want:
                await asyncio.sleep(0.5)  # a duplicate would show up here
                batch = await consumer.getmany(timeout_ms=300)
                found += [m for ms in batch.values() for m in ms]
                break
    finally:
        await consumer.stop()
    return found


async def poison_trigger(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(
            """
            CREATE FUNCTION poison() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'poisoned row'; END $$ LANGUAGE plpgsql;
            CREATE TRIGGER poison BEFORE INSERT ON event_minutes FOR EACH ROW
            WHEN (NEW.institution_id = 'poison') EXECUTE FUNCTION poison();
            """
        )
    finally:
        await conn.close()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in lines if line and line[0] != "#")
    }


def test_poison_records_between_good_events_become_bounded_dead_letters(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    topics = topics_for(prefix)
    env = consumer_env(
        tmp_path,
        pg_url,
        kafka_bootstrap,
        prefix,
        consumer_batch_size="50",
        dead_letter_value_bytes=str(LIMIT),
    )
    migrate(tmp_path, env)
    asyncio.run(poison_trigger(pg_url))
    good = make_events(400, seed=18)
    bad = {
        "two_mb": b'{"type": "a.b", "data": "' + b"x" * 2_000_000 + b'"}',
        "e_acute": ("é" * 200_000).encode(),  # 400 KB; escaped it was a 1.2 MB dead letter
        "year_9999": limit_event("9999-12-31T23:59:59-05:00"),
        "year_1": limit_event("0001-01-01T00:00:00+05:00"),
        "poison": poison_event(good[0]),
    }
    codes = {
        "two_mb": "too_large",
        "e_acute": "too_large",
        "year_9999": "overflow",
        "year_1": "overflow",
        "poison": "aggregate_failed",
    }
    placed = asyncio.run(produce_interleaved(kafka_bootstrap, topics, good, list(bad.values())))
    metrics_port = free_port()
    consumer = ConsumerProcess(
        tmp_path, env, "poison", ("--metrics-port", str(metrics_port))
    ).start()
    try:
        wait_until(lambda: total(pg_url) >= len(good), timeout=60, what="good", log=consumer.log)
        assert_exact(pg_url, good)
        assert consumer.alive(), consumer.log()

        letters = asyncio.run(read_topic(kafka_bootstrap, topics.dead_letter, len(bad)))
        assert len(letters) == len(bad), consumer.log()
        by_offset = {json.loads(m.value)["offset"]: m for m in letters}
        for (name, raw), (_, offset) in zip(bad.items(), placed, strict=True):
            message = by_offset[offset]
            body = json.loads(message.value)
            headers = dict(message.headers)
            assert len(message.value) < 6 * LIMIT + 4_000, name
            assert body["code"] == codes[name] and headers["code"] == codes[name].encode()
            assert (body["topic"], body["partition"]) == (topics.analytics, 0), name
            assert headers["source"] == f"{topics.analytics}/0/{offset}".encode()
            assert body["size"] == len(raw) and body["sha256"] == hashlib.sha256(raw).hexdigest()
            assert body["valueEncoding"] == "utf-8" and raw.startswith(body["value"].encode())
            assert body["truncated"] == (len(raw) > LIMIT), name

        seen = scrape(metrics_port)
        assert seen['edumatrix_events_invalid_total{reason="too_large"}'] == 2
        assert seen['edumatrix_events_invalid_total{reason="overflow"}'] == 2
        assert seen['edumatrix_events_invalid_total{reason="aggregate_failed"}'] == 1
        assert seen["edumatrix_events_dead_lettered_total"] == len(bad)
        assert seen["edumatrix_dead_letters_parked_total"] == 0
        assert consumer.alive(), consumer.log()
    finally:
        consumer.stop()
    assert consumer.process is not None and consumer.process.returncode == 0, consumer.log()


def test_a_dead_letter_the_producer_refuses_is_parked_and_the_batch_commits(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A real producer whose every message is over its max_request_size: the send
    raises MessageSizeTooLargeError (not retriable); the letter is parked, counted,
    and the batch is still committed."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'park.db'}"
    upgrade(url)

    async def run() -> tuple[int, float, float]:
        engine = create_engine(url)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=200)
        await producer.start()
        registry = CollectorRegistry()
        try:
            sink = KafkaDeadLetters(producer, f"{new_prefix()}-dead-letter", deadline=2.0)
            agg = Aggregator(
                make_sessionmaker(engine),
                group="g",
                thresholds=Thresholds(1000, 1000),
                dead_letter=sink,
                registry=registry,
            )
            good = json.dumps({"type": "a.b", "institutionId": "x"}).encode()
            batch = [RawRecord("src", 0, 0, good), RawRecord("src", 0, 1, b"x" * 100_000)]
            batch.append(RawRecord("src", 0, 2, good))
            applied = await agg.handle(batch)
            again = await agg.handle(batch)  # committed: a replay skips all three
            assert again.skipped == 3
            parked = registry.get_sample_value("edumatrix_dead_letters_parked_total") or 0.0
            sent = registry.get_sample_value("edumatrix_events_dead_lettered_total") or 0.0
            return len(applied.events), parked, sent
        finally:
            await producer.stop()
            await engine.dispose()

    assert asyncio.run(run()) == (2, 1.0, 0.0)
