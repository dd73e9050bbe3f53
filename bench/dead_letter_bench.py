"""Dead-letter throughput: bad records/s one ``edumatrix consume`` turns into dead letters.

A client sending garbage must not make lag grow without bound: dead-lettering
has to keep up with aggregating (one awaited send per record managed ~890/s).
Real and on loopback, like ``events_bench.py``: a tansu broker, a fresh Postgres
database, one ``python -m api consume --metrics-port P`` process. ``--count`` bad
records are produced first (``--mix small``: not JSON, invalid, a timestamp past
the datetime limit; ``large`` makes a quarter of them 60 KB, over the event size
limit); the consumer is then started and its ``edumatrix_events_invalid_total``
scraped until it reaches the count. The rate is taken from the first scrape that shows
progress to the last (group join and startup excluded). Afterwards the
dead-letter topic must hold one message per record (exit 1 otherwise).
``consumer_cpu_s``, ``broker_cpu_s`` and ``scraper_cpu_s`` are the CPU seconds the
consumer, the broker and this process used over the same window (``/proc``): on a
shared machine the rate moves with other load, CPU per record much less.
``--profile FILE`` runs the consumer under cProfile (``pstats`` reads FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.events import Topics  # noqa: E402
from streams.kafka_log import ensure_topics  # noqa: E402
from tests.kafka_broker import ConsumerProcess, TansuBroker  # noqa: E402
from tests.server import base_env  # noqa: E402
from tests.services import free_port  # noqa: E402

SMALL = [
    b"not json",
    json.dumps({"type": "activity.x", "userId": "u1"}).encode(),  # no institutionId
    json.dumps(
        {"type": "a.b", "institutionId": "x", "occurredAt": "9999-12-31T23:59:59-05:00"}
    ).encode(),
]
# A quarter of the records 60 KB (10,000 "é", each escaped to "\\u00e9" by json.dumps;
# long described as 20 KB): over the event limit, cut to the copy size.
LARGE = [*SMALL, json.dumps({"type": "a.b", "institutionId": "x", "data": "é" * 10_000}).encode()]


class ProfiledConsumer(ConsumerProcess):
    """The consumer under ``python -m cProfile -o FILE`` (written when SIGTERM ends it)."""

    def __init__(self, profile: Path, *args: Any) -> None:
        super().__init__(*args)
        self.profile = profile

    def start(self) -> ProfiledConsumer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "api"]
                + ["consume", *self.args],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (Linux), 0 when it is gone or unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(consumer: ConsumerProcess, broker: TansuBroker) -> tuple[float, float, float]:
    """CPU seconds so far of the consumer, the broker and this process (the scraper)."""
    pids = (consumer.process, broker.process)
    return (
        cpu_seconds(pids[0] and pids[0].pid),
        cpu_seconds(pids[1] and pids[1].pid),
        time.process_time(),
    )


def invalid_total(client: httpx.Client, port: int) -> float:
    """The sum of ``edumatrix_events_invalid_total`` over its reasons.

    One client for all scrapes and a plain line match: ``httpx.get`` (a new client,
    TLS context and all, per call) and the full exposition parser every 50 ms took
    a fifth of a core, on a two-core machine, from the processes measured.
    """
    text = client.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edumatrix_events_invalid_total{")
    )


async def produce(bootstrap: str, topics: Topics, count: int, bad: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = []
        for i in range(count):
            pending.append(await producer.send(topics.analytics, bad[i % len(bad)]))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def count_topic(bootstrap: str, topic: str, want: int, within: float) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found, deadline = 0, time.monotonic() + within
    try:
        while found < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            found += sum(len(ms) for ms in batch.values())
    finally:
        await consumer.stop()
    return found


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dead-letter-bench-"))
    db = f"emx_bench_{secrets.token_hex(4)}"
    db_url = f"{args.pg_admin_url.rsplit('/', 1)[0]}/{db}"
    topics = Topics(
        user_actions="dl-user-actions",
        institution_events="dl-institution-events",
        analytics="dl-analytics",
        dead_letter="dl-dead-letter",
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
            kafka_group_id="dl-bench",
            log_level="WARNING",
        )
        cmd = [sys.executable, "-m", "api", "migrate"]
        subprocess.run(cmd, env=env, cwd=workdir, check=True, capture_output=True, timeout=60)
        all_topics = [*topics.sources, topics.dead_letter]
        asyncio.run(ensure_topics(broker.bootstrap, all_topics, args.partitions))
        bad = LARGE if args.mix == "large" else SMALL
        asyncio.run(produce(broker.bootstrap, topics, args.count, bad))
        port = free_port()
        consumer_args = (workdir, env, "dl", ("--metrics-port", str(port)))
        if args.profile:
            consumer = ProfiledConsumer(Path(args.profile).resolve(), *consumer_args).start()
        else:
            consumer = ConsumerProcess(*consumer_args).start()
        first: tuple[float, float] | None = None
        cpu_first = cpu_last = (0.0, 0.0, 0.0)
        deadline = time.monotonic() + args.timeout
        seen = 0.0
        with httpx.Client() as scraper:
            while time.monotonic() < deadline:
                try:
                    seen = invalid_total(scraper, port)
                except httpx.TransportError:
                    seen = 0.0
                now = time.monotonic()
                cpu = cpu_used(consumer, broker)
                if seen and first is None:
                    first, cpu_first = (now, seen), cpu
                if seen >= args.count:
                    cpu_last = cpu
                    break
                time.sleep(0.05)
        if first is None or seen < args.count:
            raise SystemExit(f"only {seen:.0f} of {args.count} dead-lettered\n{consumer.log()}")
        rate = (seen - first[1]) / max(1e-9, now - first[0])
        letters = asyncio.run(count_topic(broker.bootstrap, topics.dead_letter, args.count, 60))
        if letters != args.count:
            raise SystemExit(f"dead-letter topic holds {letters}, expected {args.count}")
        return {
            "mix": args.mix,
            "bad_records": args.count,
            "dead_letters": letters,
            "per_second": rate,
            "consumer_cpu_s": round(cpu_last[0] - cpu_first[0], 2),
            "broker_cpu_s": round(cpu_last[1] - cpu_first[1], 2),
            "scraper_cpu_s": round(cpu_last[2] - cpu_first[2], 2),
            "window_s": round(now - first[0], 2),
        }
    finally:
        if consumer is not None:
            consumer.stop()
        broker.stop()
        asyncio.run(admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000, help="bad records")
    parser.add_argument("--mix", choices=["small", "large"], default="small")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--profile", help="write the consumer's cProfile stats here")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "EDUMATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
