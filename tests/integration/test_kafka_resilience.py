"""Consumer shutdown and database failures, with real processes, broker and Postgres.

SIGTERM must finish the batch, store its offsets with it and exit 0, so a restart
resumes exactly there; a Postgres backend killed under the consumer must be
retried, not crash it or count a batch twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import pytest

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

pytestmark = pytest.mark.postgres


def plain(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def stored_next_offsets(pg_url: str) -> int:
    conn = await asyncpg.connect(plain(pg_url))
    try:
        return int(
            await conn.fetchval("SELECT COALESCE(SUM(next_offset), 0) FROM consumer_offsets")
        )
    finally:
        await conn.close()


def test_sigterm_exits_0_with_offsets_of_what_was_applied(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix, consumer_batch_size="50")
    migrate(tmp_path, env)
    events = make_events(4_000, seed=11)
    asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
    first = ConsumerProcess(tmp_path, env, "term").start()
    wait_until(lambda: total(pg_url) > 0, timeout=60, what="progress", log=first.log)
    first.stop(signal.SIGTERM)
    assert first.process is not None and first.process.returncode == 0, first.log()
    applied = total(pg_url)
    assert applied < len(events), "consumer finished before SIGTERM; raise the count"
    # All events are valid, one record each: stored offsets count exactly what was applied.
    assert asyncio.run(stored_next_offsets(pg_url)) == applied
    second = ConsumerProcess(tmp_path, env, "after-term").start()
    try:
        wait_until(lambda: total(pg_url) >= 4_000, timeout=60, what="all", log=second.log)
        assert_exact(pg_url, events)
        assert asyncio.run(stored_next_offsets(pg_url)) == len(events)
    finally:
        second.stop()


async def terminate_backends(pg_url: str, *, rounds: int, every: float) -> int:
    """pg_terminate_backend every other connection to the test database, repeatedly."""
    conn = await asyncpg.connect(plain(pg_url))
    killed = 0
    try:
        for _ in range(rounds):
            killed += int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            await asyncio.sleep(every)
    finally:
        await conn.close()
    return killed


def test_killed_database_connections_are_retried_exactly(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    # Small batches and enough events that the kills (about 1 s) land mid-stream even
    # on a fast, idle machine (4,000 in batches of 50 once finished before them).
    env = consumer_env(tmp_path, pg_url, kafka_bootstrap, prefix, consumer_batch_size="20")
    migrate(tmp_path, env)
    events = make_events(12_000, seed=12)
    asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
    consumer = ConsumerProcess(tmp_path, env, "pgkill").start()
    try:
        wait_until(lambda: total(pg_url) > 0, timeout=60, what="progress", log=consumer.log)
        killed = asyncio.run(terminate_backends(pg_url, rounds=20, every=0.05))
        assert killed > 0
        assert total(pg_url) < len(events), "consumer finished before the kills; raise the count"
        wait_until(lambda: total(pg_url) >= len(events), timeout=60, what="all", log=consumer.log)
        time.sleep(0.5)  # a double-applied batch would show up as a count above the total
        assert_exact(pg_url, events)
        assert consumer.alive(), consumer.log()
        assert "aggregate.retry" in consumer.log()
    finally:
        consumer.stop()
