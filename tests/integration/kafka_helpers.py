"""Events, producers and independent counts for the Kafka analytics tests."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from streams.events import Topics
from tests.server import base_env

INSTITUTIONS = ("northwood", "riverside", "hillcrest")
TYPES = ("activity.page_view", "activity.quiz_submit", "auth.login", "error.internal")
Key = tuple[str, str, datetime]


def make_events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    events = []
    for i in range(count):
        event: dict[str, Any] = {
            "id": f"e{seed}-{i}",
            "type": rng.choice(TYPES),
            "institutionId": rng.choice(INSTITUTIONS),
            "userId": f"u{rng.randrange(40)}",
            "occurredAt": (base + timedelta(seconds=rng.uniform(0, 299))).isoformat(),
            "data": {"n": i},
        }
        if rng.random() < 0.3:
            event["departmentId"] = "math"
        events.append(event)
    return events


def expected(events: list[dict[str, Any]]) -> tuple[Counter[Key], dict[Key, int]]:
    """Counts and distinct users per (institution, type, minute), computed here."""
    counts: Counter[Key] = Counter()
    users: dict[Key, set[str]] = defaultdict(set)
    for e in events:
        at = datetime.fromisoformat(e["occurredAt"]).replace(second=0, microsecond=0)
        key = (e["institutionId"], e["type"], at)
        counts[key] += 1
        users[key].add(e["userId"])
    return counts, {k: len(v) for k, v in users.items()}


async def aggregated(url: str) -> tuple[Counter[Key], dict[Key, int]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT institution_id, type, bucket, SUM(count) FROM event_minutes "
                    "GROUP BY institution_id, type, bucket"
                )
            )
            counts: Counter[Key] = Counter({(i, t, b): int(n) for i, t, b, n in rows})
            rows = await conn.execute(
                text(
                    "SELECT institution_id, type, bucket, COUNT(*) FROM event_user_minutes "
                    "GROUP BY institution_id, type, bucket"
                )
            )
            users = {(i, t, b): int(n) for i, t, b, n in rows}
        return counts, users
    finally:
        await engine.dispose()


def total(url: str) -> int:
    return sum(asyncio.run(aggregated(url))[0].values())


def topics_for(prefix: str) -> Topics:
    return Topics(
        user_actions=f"{prefix}-user-actions",
        institution_events=f"{prefix}-institution-events",
        analytics=f"{prefix}-analytics",
        dead_letter=f"{prefix}-dead-letter",
    )


def consumer_env(
    workdir: Path, pg_url: str, bootstrap: str, prefix: str, **extra: str
) -> dict[str, str]:
    t = topics_for(prefix)
    return base_env(
        workdir,
        database_url=pg_url,
        kafka_bootstrap=bootstrap,
        kafka_topic_user_actions=t.user_actions,
        kafka_topic_institution_events=t.institution_events,
        kafka_topic_analytics=t.analytics,
        kafka_topic_dead_letter=t.dead_letter,
        kafka_topic_partitions="4",
        kafka_group_id=f"{prefix}-group",
        kafka_session_timeout_ms="3000",
        kafka_rebalance_timeout_ms="5000",
        log_format="console",
        **extra,
    )


def migrate(workdir: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "api", "migrate"],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )


def new_prefix() -> str:
    return f"t{secrets.token_hex(4)}"


async def produce(bootstrap: str, topics: Topics, events: list[dict[str, Any]]) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.kafka_log import ensure_topics

    await ensure_topics(bootstrap, [*topics.sources, topics.dead_letter], 4)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topics.for_type(e["type"]),
                json.dumps(e).encode(),
                key=e["institutionId"].encode(),
            )
            for e in events
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, log: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")
