"""Event pipeline benchmark: events/s aggregated and event -> aggregate latency.

Everything is real and on loopback: a tansu broker (tests/kafka_broker.py), a
fresh Postgres database migrated by ``python -m api migrate``, and one
``python -m api consume --metrics-port P`` process. This script produces with
aiokafka and reads the consumer's own Prometheus metrics:

* latency: ``edumatrix_aggregation_latency_seconds`` is observed by the consumer
  right after the batch transaction committed, as ``now - occurredAt`` of each
  event (same host clock). Per phase we take the difference of two scrapes and
  interpolate quantiles inside buckets (like PromQL ``histogram_quantile``); the
  share of events at or under 200 ms is exact because 0.2 is a bucket bound.
* throughput: ``edumatrix_events_aggregated_total`` over the phase's wall time.

Phases: ``steady`` sends ``--rate`` events/s for ``--duration`` s (paced in 10 ms
ticks, ``occurredAt`` = send time); ``saturation`` sends ``--saturation`` events
as fast as the producer can. After each phase the database totals must equal
what was sent (exit 1 otherwise). Every wait is bounded; processes are stopped
by PID; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.events import Topics  # noqa: E402
from streams.kafka_log import ensure_topics  # noqa: E402
from tests.kafka_broker import ConsumerProcess, TansuBroker  # noqa: E402
from tests.server import base_env  # noqa: E402
from tests.services import free_port  # noqa: E402

HIST = "edumatrix_aggregation_latency_seconds"
INSTITUTIONS = ("northwood", "riverside", "hillcrest", "lakeside")
TYPES = ("activity.page_view", "activity.quiz_submit", "auth.login", "error.internal")


def scrape(port: int) -> tuple[float, dict[float, float]]:
    """(events aggregated, cumulative latency buckets) from the consumer."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    applied, buckets = 0.0, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edumatrix_events_aggregated_total":
                applied = s.value
            elif s.name == f"{HIST}_bucket":
                buckets[float(s.labels["le"])] = s.value
    return applied, buckets


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Linear interpolation inside the bucket holding the q-th event of the phase."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    rank, lower = q * counts[-1], 0.0
    for i, bound in enumerate(bounds):
        below = counts[i - 1] if i else 0.0
        if counts[i] >= rank and counts[i] > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (counts[i] - below)
        lower = bound
    return float("nan")


def share_under(bound: float, before: dict[float, float], after: dict[float, float]) -> float:
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    return (after[bound] - before.get(bound, 0.0)) / total if total else float("nan")


def event(i: int, prefix: str) -> bytes:
    return json.dumps(
        {
            "id": f"{prefix}-{i}",
            "type": TYPES[i % len(TYPES)],
            "institutionId": INSTITUTIONS[i % len(INSTITUTIONS)],
            "userId": f"u{i % 200}",
            "occurredAt": datetime.now(UTC).isoformat(),
            "data": {"n": i},
        }
    ).encode()


async def produce(bootstrap: str, topics: Topics, count: int, rate: float | None) -> float:
    """Send ``count`` events, paced at ``rate``/s (None: flat out); return seconds."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    prefix, sent, start = secrets.token_hex(3), 0, time.monotonic()
    try:
        pending = []
        while sent < count:
            due = count if rate is None else min(count, int((time.monotonic() - start) * rate) + 1)
            for i in range(sent, due):
                raw = event(i, prefix)
                inst = INSTITUTIONS[i % len(INSTITUTIONS)].encode()
                pending.append(await producer.send(topics.for_type(TYPES[i % 4]), raw, key=inst))
            sent = due
            if rate is not None:
                await asyncio.sleep(0.01)
            if len(pending) > 2000 or sent == count:
                await asyncio.gather(*pending)
                pending = []
    finally:
        await producer.stop()
    return time.monotonic() - start


def wait_applied(port: int, target: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied, _ = scrape(port)
        if applied >= target:
            return applied
        time.sleep(0.05)
    raise SystemExit(f"consumer aggregated {scrape(port)[0]:.0f} < {target:.0f} in {timeout}s")


async def db_total(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT COALESCE(SUM(count), 0) FROM event_minutes"))
    finally:
        await conn.close()


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def phase(name: str, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    port, count = ctx["metrics_port"], ctx["count"]
    rate = args.rate if name == "steady" else None
    n = int(args.rate * args.duration) if name == "steady" else args.saturation
    applied0, buckets0 = scrape(port)
    start = time.monotonic()
    send_s = asyncio.run(produce(ctx["bootstrap"], ctx["topics"], n, rate))
    applied1 = wait_applied(port, applied0 + n, timeout=args.duration + 60)
    wall = time.monotonic() - start
    _, buckets1 = scrape(port)
    ctx["count"] = count + n
    stored = asyncio.run(db_total(ctx["db_url"]))
    if stored != ctx["count"] or applied1 != applied0 + n:
        raise SystemExit(f"{name}: stored {stored}, applied {applied1}, sent {ctx['count']}")
    return {
        "phase": name,
        "events": n,
        "sent_per_s": n / send_s,
        "aggregated_per_s": n / wall,
        "p50_ms": 1000 * quantile(0.5, buckets0, buckets1),
        "p99_ms": 1000 * quantile(0.99, buckets0, buckets1),
        "share_le_200ms": share_under(0.2, buckets0, buckets1),
    }


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs, {model}, {platform.system()} {platform.release()}"


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="events-bench-"))
    db = f"emx_bench_{secrets.token_hex(4)}"
    base = args.pg_admin_url.rsplit("/", 1)[0]
    db_url = f"{base}/{db}"
    topics = Topics(
        user_actions="bench-user-actions",
        institution_events="bench-institution-events",
        analytics="bench-analytics",
        dead_letter="bench-dead-letter",
    )
    broker = TansuBroker().start()
    consumer: ConsumerProcess | None = None
    asyncio.run(admin(args.pg_admin_url, f'CREATE DATABASE "{db}"'))
    try:
        env = base_env(
            workdir,
            database_url=db_url.replace("postgresql://", "postgresql+asyncpg://", 1),
            kafka_bootstrap=broker.bootstrap,
            kafka_topic_user_actions=topics.user_actions,
            kafka_topic_institution_events=topics.institution_events,
            kafka_topic_analytics=topics.analytics,
            kafka_topic_dead_letter=topics.dead_letter,
            kafka_topic_partitions=str(args.partitions),
            kafka_group_id="bench",
            log_level="WARNING",
        )
        cmd = [sys.executable, "-m", "api", "migrate"]
        subprocess.run(cmd, env=env, cwd=workdir, check=True, capture_output=True, timeout=60)
        all_topics = [*topics.sources, topics.dead_letter]
        asyncio.run(ensure_topics(broker.bootstrap, all_topics, args.partitions))
        metrics_port = free_port()
        consumer = ConsumerProcess(workdir, env, "bench", ("--metrics-port", str(metrics_port)))
        consumer.start()
        ctx: dict[str, Any] = {
            "metrics_port": metrics_port,
            "bootstrap": broker.bootstrap,
            "topics": topics,
            "db_url": db_url,
            "count": 0,
        }
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the metrics port opens before the group joins
            try:
                scrape(metrics_port)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        warm = argparse.Namespace(**{**vars(args), "rate": 100.0, "duration": 2.0})
        phase("steady", warm, ctx)  # group joined, partitions assigned, pools warm
        results = [phase("steady", args, ctx)]
        if args.saturation:
            results.append(phase("saturation", args, ctx))
        return results
    finally:
        if consumer is not None:
            consumer.stop()
        broker.stop()
        asyncio.run(admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="steady events/s")
    parser.add_argument("--duration", type=float, default=30.0, help="steady phase seconds")
    parser.add_argument("--saturation", type=int, default=20_000, help="events; 0 skips")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "EDUMATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    results = run(args)
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print("| phase | events | sent/s | aggregated/s | p50 ms | p99 ms | <= 200 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['phase']} | {r['events']} | {r['sent_per_s']:.0f} | "
            f"{r['aggregated_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{100 * r['share_le_200ms']:.2f}% |"
        )


if __name__ == "__main__":
    main()
