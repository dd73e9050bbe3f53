"""Consumer-group benchmark: start-up stall and event -> aggregate latency with
several ``edumatrix consume`` processes in one group.

Everything is real and on loopback, as in ``bench/events_bench.py`` (whose
helpers this reuses): a tansu broker on a free port, a fresh Postgres database
migrated by ``python -m api migrate`` and dropped at the end, and ``--consumers``
``python -m api consume --metrics-port P`` processes started at the same moment.

* **start-up**: ``--backlog`` events are produced before the consumers start.
  For each consumer: seconds from its ``Popen`` to its metrics port answering
  (interpreter and imports), and to its first applied event (its first batch);
  and for the group, seconds until the whole backlog is aggregated.
* **steady**: ``--rate`` events/s for ``--duration`` s (10 ms ticks,
  ``occurredAt`` = send time). Latency is each consumer's
  ``edumatrix_aggregation_latency_seconds`` histogram (observed right after the
  batch transaction committed), summed over the consumers, difference of two
  scrapes, quantiles interpolated inside buckets (like PromQL).

After each phase the database total must equal what was sent, and the
consumers' applied counters must add up to it (exit 1 otherwise). Every wait is
bounded, every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from events_bench import (  # noqa: E402
    admin,
    db_total,
    machine,
    produce,
    quantile,
    scrape,
    share_under,
)

from streams.events import Topics  # noqa: E402
from streams.kafka_log import ensure_topics  # noqa: E402
from tests.kafka_broker import ConsumerProcess, TansuBroker  # noqa: E402
from tests.server import base_env  # noqa: E402
from tests.services import free_port  # noqa: E402


def scrape_all(ports: list[int]) -> tuple[float, dict[float, float]]:
    """Applied events and latency buckets, summed over the consumers."""
    applied, buckets = 0.0, {}
    for port in ports:
        a, b = scrape(port)
        applied += a
        for bound, count in b.items():
            buckets[bound] = buckets.get(bound, 0.0) + count
    return applied, buckets


def try_scrape(port: int) -> float | None:
    try:
        return scrape(port)[0]
    except httpx.TransportError:
        return None


def startup(
    args: argparse.Namespace, env: dict[str, str], workdir: Path, ctx: dict[str, Any]
) -> dict[str, Any]:
    if args.precreate:
        asyncio.run(produce(ctx["bootstrap"], ctx["topics"], args.backlog, None))
    ports = [free_port() for _ in range(args.consumers)]
    consumers = [
        ConsumerProcess(workdir, env, f"c{i}", ("--metrics-port", str(port)))
        for i, port in enumerate(ports)
    ]
    ctx["consumers"] = consumers
    ctx["ports"] = ports
    start = time.monotonic()
    for consumer in consumers:
        consumer.start()
    if not args.precreate:  # a first deploy: consumers create the topics they join on
        topics = ctx["topics"]
        asyncio.run(ensure_topics(ctx["bootstrap"], [*topics.sources], args.partitions))
        asyncio.run(produce(ctx["bootstrap"], topics, args.backlog, None))
    ctx["count"] += args.backlog
    up: list[float | None] = [None] * len(ports)
    first: list[float | None] = [None] * len(ports)
    drained: float | None = None
    deadline = start + args.startup_timeout
    while time.monotonic() < deadline:
        now = time.monotonic() - start
        total = 0.0
        for i, port in enumerate(ports):
            applied = try_scrape(port)
            if applied is None:
                continue
            if up[i] is None:
                up[i] = now
            if applied > 0 and first[i] is None:
                first[i] = now
            total += applied
        if drained is None and total >= args.backlog:
            drained = now
        if drained is not None and all(f is not None for f in first):
            break
        time.sleep(0.05)
    stored = asyncio.run(db_total(ctx["db_url"]))
    if drained is None or stored != ctx["count"]:
        logs = "\n".join(c.log() for c in consumers)
        raise SystemExit(f"start-up: stored {stored} of {ctx['count']} in time\n{logs}")
    return {"metrics_up_s": up, "first_batch_s": first, "backlog_drained_s": drained}


def steady(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    ports = ctx["ports"]
    n = int(args.rate * args.duration)
    applied0, buckets0 = scrape_all(ports)
    start = time.monotonic()
    send_s = asyncio.run(produce(ctx["bootstrap"], ctx["topics"], n, args.rate))
    deadline = time.monotonic() + args.duration + 60
    applied1 = applied0
    while time.monotonic() < deadline:
        applied1, _ = scrape_all(ports)
        if applied1 >= applied0 + n:
            break
        time.sleep(0.05)
    wall = time.monotonic() - start
    _, buckets1 = scrape_all(ports)
    ctx["count"] += n
    stored = asyncio.run(db_total(ctx["db_url"]))
    if stored != ctx["count"] or applied1 != applied0 + n:
        raise SystemExit(f"steady: stored {stored}, applied {applied1}, sent {ctx['count']}")
    return {
        "events": n,
        "sent_per_s": n / send_s,
        "aggregated_per_s": n / wall,
        "p50_ms": 1000 * quantile(0.5, buckets0, buckets1),
        "p99_ms": 1000 * quantile(0.99, buckets0, buckets1),
        "share_le_200ms": share_under(0.2, buckets0, buckets1),
    }


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    workdir = Path(tempfile.mkdtemp(prefix="group-bench-"))
    db = f"emx_bench_{secrets.token_hex(4)}"
    db_url = f"{args.pg_admin_url.rsplit('/', 1)[0]}/{db}"
    prefix = f"gb{secrets.token_hex(2)}"
    topics = Topics(
        user_actions=f"{prefix}-user-actions",
        institution_events=f"{prefix}-institution-events",
        analytics=f"{prefix}-analytics",
        dead_letter=f"{prefix}-dead-letter",
    )
    broker = TansuBroker().start()
    ctx: dict[str, Any] = {
        "bootstrap": broker.bootstrap,
        "topics": topics,
        "db_url": db_url,
        "count": 0,
        "consumers": [],
    }
    asyncio.run(admin(args.pg_admin_url, f'CREATE DATABASE "{db}"'))
    try:
        settings = {
            "database_url": db_url.replace("postgresql://", "postgresql+asyncpg://", 1),
            "kafka_bootstrap": broker.bootstrap,
            "kafka_topic_user_actions": topics.user_actions,
            "kafka_topic_institution_events": topics.institution_events,
            "kafka_topic_analytics": topics.analytics,
            "kafka_topic_dead_letter": topics.dead_letter,
            "kafka_topic_partitions": str(args.partitions),
            "kafka_group_id": f"{prefix}-group",
            "log_level": "WARNING",
        }
        for item in args.setting:
            key, _, value = item.partition("=")
            settings[key.lower().removeprefix("edumatrix_")] = value
        env = base_env(workdir, **settings)
        if args.tree:  # the consumers (and the migration) run that tree's code: A/B runs
            env["PYTHONPATH"] = str(Path(args.tree).resolve())
        cmd = [sys.executable, "-m", "api", "migrate"]
        subprocess.run(cmd, env=env, cwd=workdir, check=True, capture_output=True, timeout=60)
        if args.precreate:
            all_topics = [*topics.sources, topics.dead_letter]
            asyncio.run(ensure_topics(broker.bootstrap, all_topics, args.partitions))
        first = startup(args, env, workdir, ctx)
        for restart in args.restart:
            print(f"start-up: {first}", flush=True)
            for consumer in ctx["consumers"]:
                consumer.stop(signal.SIGKILL if restart == "kill" else signal.SIGTERM)
            first = startup(args, env, workdir, ctx)
        second = steady(args, ctx) if args.duration > 0 else None
        return first, second
    finally:
        for consumer in ctx["consumers"]:
            consumer.stop()
        broker.stop()
        asyncio.run(admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=2000, help="events before start-up")
    parser.add_argument("--rate", type=float, default=2000.0, help="steady events/s")
    parser.add_argument("--duration", type=float, default=20.0, help="steady s; 0 skips")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--no-precreate",
        dest="precreate",
        action="store_false",
        help="start the consumers before the topics exist (a first deploy)",
    )
    parser.add_argument(
        "--restart",
        action="append",
        default=[],
        choices=["term", "kill"],
        help="after start-up, stop every consumer (SIGTERM or SIGKILL) and start them "
        "again; the start-up reported is the last one (repeatable)",
    )
    parser.add_argument("--startup-timeout", type=float, default=90.0)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an EDUMATRIX_ setting for the consumers, e.g. kafka_session_timeout_ms=10000",
    )
    parser.add_argument(
        "--tree",
        help="run the consumers from this source tree (e.g. an export of HEAD) instead of this one",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "EDUMATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    if not 1 <= args.consumers <= 8 or args.rate * args.duration > 200_000:
        raise SystemExit("bounded runs only: 1-8 consumers, at most 200,000 steady events")
    first, second = run(args)
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    tree = args.tree or "this tree"
    print(f"consumers {args.consumers}, settings {args.setting or 'defaults'}, code: {tree}")

    def seconds(values: list[float | None]) -> str:
        return ", ".join("-" if v is None else f"{v:.1f}" for v in values)

    print("| metrics up s | first batch s | backlog drained s |")
    print("|---|---|---|")
    print(
        f"| {seconds(first['metrics_up_s'])} | {seconds(first['first_batch_s'])} | "
        f"{first['backlog_drained_s']:.1f} |"
    )
    if second is not None:
        print("| events | sent/s | aggregated/s | p50 ms | p99 ms | <= 200 ms |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {second['events']} | {second['sent_per_s']:.0f} | "
            f"{second['aggregated_per_s']:.0f} | {second['p50_ms']:.0f} | "
            f"{second['p99_ms']:.0f} | {100 * second['share_le_200ms']:.2f}% |"
        )


if __name__ == "__main__":
    main()
