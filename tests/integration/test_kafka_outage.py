"""Broker outages with real processes: a tansu broker each test starts, pauses
(SIGSTOP/SIGCONT by PID: a hung broker) or starts late, an ``edumatrix serve``
in cluster mode and ``edumatrix consume``.

The server must start and serve while Kafka is away, say so in /readyz without
leaving the load balancer, and deliver every accepted event once the broker is
back; only buffer overflow loses events, each counted once. ``consume`` must
wait for the broker, however long, and still exit 0 on SIGTERM. Counts come from
the broker itself (a plain consumer over the topics) and from /metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

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
from tests.kafka_broker import ConsumerProcess, TansuBroker
from tests.server import ServerProcess

TRACK = "mutation($input: TrackActivityInput!) { trackActivity(input: $input) }"
REQUEST_TIMEOUT_MS = 1500  # the producer's; a pause twice as long times requests out


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """This test's own broker, not started: each test decides when. Never left
    stopped by a signal (SIGCONT first), always stopped by PID; requested before
    ``make_server`` so that it stops after the servers (tansu takes seconds to
    stop while clients are connected)."""
    own = TansuBroker()
    yield own
    if own.process is not None and own.process.poll() is None:
        os.kill(own.process.pid, signal.SIGCONT)
    own.stop()


def server_settings(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    t = topics_for(prefix)
    return {
        "kafka_bootstrap": bootstrap,
        "kafka_topic_user_actions": t.user_actions,
        "kafka_topic_institution_events": t.institution_events,
        "kafka_topic_analytics": t.analytics,
        "kafka_topic_dead_letter": t.dead_letter,
        "kafka_topic_partitions": "2",
        "kafka_request_timeout_ms": str(REQUEST_TIMEOUT_MS),
        "kafka_retry_backoff_ms": "100",
        "kafka_retry_backoff_max_ms": "1000",
        "log_format": "console",
        **extra,
    }


def start_server(make_server: Callable[..., ServerProcess], **settings: str) -> ServerProcess:
    server = make_server(**settings)
    server.cli("migrate")  # SQLite in its data dir; cluster mode because of Kafka
    return server.start()


def track(server: ServerProcess, numbers: range) -> list[bool]:
    """``trackActivity`` as nw-cy; each call emits ``auth.login`` and the activity."""
    accepted = []
    for n in numbers:
        result = server.graphql(
            TRACK, {"input": {"type": "outage", "data": {"n": n}}}, as_user="nw-cy"
        )
        assert "errors" not in result, result
        accepted.append(result["data"] == {"trackActivity": True})
    return accepted


def readyz(server: ServerProcess) -> tuple[int, dict[str, str]]:
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    return response.status_code, response.json()


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{want} not in /metrics")


@dataclass(frozen=True)
class Record:
    id: str
    type: str
    n: int | None


async def _read_topics(bootstrap: str, topics: Topics, want: int, within: float) -> list[Record]:
    consumer = AIOKafkaConsumer(
        *topics.sources, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for m in messages:
                    body = json.loads(m.value)
                    records.append(Record(body["id"], body["type"], body["data"].get("n")))
            if len({r.id for r in records}) >= want:
                # All arrived: read one more second for copies sent again behind them.
                deadline = min(deadline, time.monotonic() + 1.0)
    finally:
        await consumer.stop()
    return records


def read_topics(bootstrap: str, prefix: str, want: int, within: float = 40.0) -> list[Record]:
    """Every record on the prefix's source topics, once ``want`` distinct ids arrived
    (or ``within`` seconds passed): duplicates included, so tests can count them."""
    return asyncio.run(_read_topics(bootstrap, topics_for(prefix), want, within))


def activity_numbers(records: list[Record]) -> list[int]:
    return sorted(r.n for r in records if r.type == "activity.outage" and r.n is not None)


def assert_copies_counted(server: ServerProcess, records: list[Record]) -> None:
    """Every second copy of an event on the topics was sent again after a send that
    may have written it: the "unconfirmed" counter bounds the duplicates. (Outages
    that only refuse connections write none; a request timing out under load can.)"""
    copies = len(records) - len({r.id for r in records})
    assert copies <= metric(server, "edumatrix_events_resent_total", reason="unconfirmed")


def wait_events_ok(server: ServerProcess, timeout: float = 20.0) -> None:
    wait_until(
        lambda: readyz(server)[1].get("events") == "ok",
        timeout=timeout,
        what="/readyz events: ok",
        log=server.log,
    )


def test_serves_while_the_broker_is_down_then_delivers_every_event(
    broker: TansuBroker, make_server: Callable[..., ServerProcess]
) -> None:
    prefix = new_prefix()
    server = start_server(make_server, **server_settings(broker.bootstrap, prefix))
    status, body = readyz(server)
    assert status == 200 and body["status"] == "ready", body
    assert body["events"].startswith("degraded: cannot connect: KafkaConnectionError"), body

    accepted = track(server, range(20))
    assert all(accepted)
    status, body = readyz(server)
    assert status == 200 and body["events"].endswith("; 40 events buffered"), body
    assert metric(server, "edumatrix_events_degraded") == 1

    broker.start()
    emitted = int(metric(server, "edumatrix_events_emitted_total"))
    assert emitted == 40  # auth.login + activity per call
    records = read_topics(broker.bootstrap, prefix, emitted)
    assert len({r.id for r in records}) == emitted
    assert activity_numbers(records) == list(range(20))
    assert metric(server, "edumatrix_events_dropped_total") == 0
    assert_copies_counted(server, records)
    wait_events_ok(server)
    assert metric(server, "edumatrix_events_buffered") == 0


def test_hung_broker_longer_than_the_request_timeout_loses_nothing(
    broker: TansuBroker, make_server: Callable[..., ServerProcess]
) -> None:
    prefix = new_prefix()
    broker.start()
    assert broker.process is not None
    server = start_server(make_server, **server_settings(broker.bootstrap, prefix))
    wait_events_ok(server)
    assert all(track(server, range(5)))  # connected and sending

    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert all(track(server, range(5, 35)))
        assert time.monotonic() - began < 20, "requests waited for the hung broker"
        wait_until(
            lambda: readyz(server)[1]["events"].startswith("degraded"),
            timeout=15,
            what="/readyz events: degraded",
            log=server.log,
        )
        status, body = readyz(server)
        assert status == 200 and body["status"] == "ready", body
        # Paused for more than twice the request timeout: sends did time out.
        time.sleep(max(0.0, began + 2.5 * REQUEST_TIMEOUT_MS / 1000 - time.monotonic()))
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)

    emitted = int(metric(server, "edumatrix_events_emitted_total"))
    assert emitted == 70
    records = read_topics(broker.bootstrap, prefix, emitted)
    assert len({r.id for r in records}) == emitted, server.log()
    assert sorted(set(activity_numbers(records))) == list(range(35))
    wait_events_ok(server)
    assert metric(server, "edumatrix_events_dropped_total") == 0
    # The hung broker wrote the timed-out requests when it resumed, and the server
    # sent those events again: each copy is counted as a possible duplicate.
    assert metric(server, "edumatrix_events_resent_total", reason="unconfirmed") > 0
    assert_copies_counted(server, records)


def test_broker_down_for_many_request_timeouts_loses_nothing(
    broker: TansuBroker, make_server: Callable[..., ServerProcess]
) -> None:
    """A crashed broker (refused connections, nothing written) replaced by a new,
    empty one on the same address: every event accepted meanwhile reaches it, once."""
    prefix = new_prefix()
    broker.start()
    assert broker.process is not None
    server = start_server(make_server, **server_settings(broker.bootstrap, prefix))
    wait_events_ok(server)
    os.kill(broker.process.pid, signal.SIGKILL)
    broker.process.wait(timeout=10)
    broker.process = None
    before = int(metric(server, "edumatrix_events_emitted_total"))

    began = time.monotonic()
    assert all(track(server, range(20)))
    time.sleep(max(0.0, began + 3 * REQUEST_TIMEOUT_MS / 1000 - time.monotonic()))
    status, body = readyz(server)
    assert status == 200 and body["events"].startswith("degraded: "), body

    broker.start()  # memory storage: only what was sent since it started is on it
    accepted = int(metric(server, "edumatrix_events_emitted_total")) - before
    assert accepted == 40
    records = read_topics(broker.bootstrap, prefix, accepted)
    assert len({r.id for r in records}) == accepted, server.log()
    assert activity_numbers(records) == list(range(20))
    wait_events_ok(server)
    assert metric(server, "edumatrix_events_dropped_total") == 0
    # Refused connections wrote nothing: those events are re-sent as "not_sent",
    # not counted as possible duplicates.
    assert metric(server, "edumatrix_events_resent_total", reason="not_sent") > 0
    assert_copies_counted(server, records)


def test_buffer_full_during_an_outage_drops_exactly_what_is_not_delivered(
    broker: TansuBroker, make_server: Callable[..., ServerProcess]
) -> None:
    prefix = new_prefix()
    settings = server_settings(broker.bootstrap, prefix, event_buffer_size="15")
    server = start_server(make_server, **settings)
    calls = 20
    accepted = track(server, range(calls))
    attempts = 2 * calls  # auth.login + activity per call
    emitted = int(metric(server, "edumatrix_events_emitted_total"))
    dropped = int(metric(server, "edumatrix_events_dropped_total"))
    assert emitted == 15 and emitted + dropped == attempts

    broker.start()
    records = read_topics(broker.bootstrap, prefix, emitted)
    delivered_ids = {r.id for r in records}
    assert len(delivered_ids) == emitted
    assert dropped == attempts - len(delivered_ids)  # the counter is exactly what was lost
    delivered = activity_numbers(records)
    assert delivered == [n for n, ok in zip(range(calls), accepted, strict=True) if ok]
    wait_events_ok(server)
    assert metric(server, "edumatrix_events_dropped_total") == dropped  # counted once
    assert_copies_counted(server, records)


@pytest.mark.postgres
def test_consume_waits_for_a_late_broker_and_exits_0_on_sigterm(
    tmp_path: Path, pg_url: str, broker: TansuBroker
) -> None:
    prefix = new_prefix()
    env = consumer_env(
        tmp_path,
        pg_url,
        broker.bootstrap,
        prefix,
        kafka_retry_backoff_ms="100",
        kafka_retry_backoff_max_ms="1000",
    )
    migrate(tmp_path, env)

    waiting = ConsumerProcess(tmp_path, env, "sigterm-while-waiting").start()
    try:
        wait_until(
            lambda: "consumer.broker_unavailable" in waiting.log(),
            timeout=30,
            what="a retry",
            log=waiting.log,
        )
        began = time.monotonic()
        waiting.stop(signal.SIGTERM)
        assert waiting.process is not None and waiting.process.returncode == 0, waiting.log()
        assert time.monotonic() - began < 10, waiting.log()
    finally:
        waiting.kill()

    consumer = ConsumerProcess(tmp_path, env, "early").start()
    try:
        wait_until(
            lambda: consumer.log().count("consumer.broker_unavailable") >= 2,
            timeout=30,
            what="retries",
            log=consumer.log,
        )
        time.sleep(1.0)
        assert consumer.alive(), consumer.log()
        broker.start()
        events = make_events(300, seed=18)
        asyncio.run(produce(broker.bootstrap, topics_for(prefix), events))
        wait_until(lambda: total(pg_url) >= 300, timeout=60, what="all events", log=consumer.log)
        assert_exact(pg_url, events)
        consumer.stop(signal.SIGTERM)
        assert consumer.process is not None and consumer.process.returncode == 0, consumer.log()
    finally:
        consumer.kill()
