"""Honest consumer lag, the stalled-pipeline alert and clean group exits, with a
real tansu broker, real Postgres, and servers and consumers as processes.

Found by an operator test: with no consumer running and 5,000 events waiting,
``systemStatus`` showed lag 0 on every partition (it subtracted the high
watermark each consumer saved at its last batch), the server exported no lag
gauge, the consumer's gauge was absent until its first batch, nothing alerted,
and consumers restarted together stalled ~19 s before their first batch.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka_group import GroupConsumer
from streams.kafka_log import ensure_topics
from tests.gqlws import connect
from tests.integration.kafka_helpers import (
    make_events,
    new_prefix,
    produce,
    topics_for,
    total,
    wait_until,
)
from tests.kafka_broker import ConsumerProcess
from tests.server import ServerProcess, base_env, token
from tests.services import free_port

pytestmark = pytest.mark.postgres

STATUS = """{ systemStatus {
  lagTotal lagError lagReadAt
  consumers { group topic partition nextOffset highWatermark lag updatedAt }
} }"""
CHANNEL = "subscription($name: String!) { channel(name: $name) { kind channel data } }"
PARTITIONS = 4


def cluster_settings(pg_url: str, bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    t = topics_for(prefix)
    return {
        "database_url": pg_url,
        "kafka_bootstrap": bootstrap,
        "kafka_topic_user_actions": t.user_actions,
        "kafka_topic_institution_events": t.institution_events,
        "kafka_topic_analytics": t.analytics,
        "kafka_topic_dead_letter": t.dead_letter,
        "kafka_topic_partitions": str(PARTITIONS),
        "kafka_group_id": f"{prefix}-group",
        "kafka_session_timeout_ms": "3000",
        "kafka_rebalance_timeout_ms": "5000",
        "consumer_lag_interval_seconds": "0.2",
        "log_format": "console",
        **extra,
    }


def off_user_actions(count: int, seed: int) -> list[dict[str, Any]]:
    """Events for the institution-events and analytics topics only: the server's own
    events (an ``auth.login`` per authenticated request, this test's queries
    included) go to user-actions, so these two topics hold exactly what we sent."""
    events = make_events(count, seed=seed)
    for i, event in enumerate(events):
        event["type"] = "mutation.lag_test" if i % 2 else "metric.lag_test"
    return events


def ours(parts: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    t = topics_for(prefix)
    return [p for p in parts if p["topic"] in (t.institution_events, t.analytics)]


def our_lag(status: dict[str, Any], prefix: str) -> int:
    return sum(p["lag"] for p in ours(status["consumers"], prefix))


def status(server: ServerProcess) -> dict[str, Any]:
    result = server.graphql(STATUS, as_user="nw-admin")
    assert "errors" not in result, result
    found: dict[str, Any] = result["data"]["systemStatus"]  # type: ignore[index]
    return found


def gauge(url: str, prefix: str) -> dict[tuple[str, str], float] | None:
    """``edumatrix_consumer_lag`` samples of this test's topics; None if the family
    has no sample of them at all."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    samples = {
        (s.labels["topic"], s.labels["partition"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edumatrix_consumer_lag" and s.labels["topic"].startswith(prefix)
    }
    return samples or None


def applied_by(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edumatrix_events_aggregated_total":
                return s.value
    return 0.0


def until(check: Callable[[], Any], *, timeout: float, what: str, log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last {last!r}\n{log()}")


def test_a_stopped_pipeline_shows_its_backlog_exactly_then_drains(
    tmp_path: Path,
    pg_url: str,
    kafka_bootstrap: str,
    make_server: Callable[..., ServerProcess],
) -> None:
    prefix = new_prefix()
    settings = cluster_settings(pg_url, kafka_bootstrap, prefix)
    server = make_server(**settings)
    server.cli("migrate")
    server.start()
    events = off_user_actions(300, seed=21)
    asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
    t = topics_for(prefix)

    # No consumer has ever run: the whole backlog is lag, per partition and in total.
    seen = until(
        lambda: (s := status(server)) and our_lag(s, prefix) == len(events) and s,
        timeout=20,
        what="lag 300",
        log=server.log,
    )
    parts = seen["consumers"]
    assert seen["lagError"] is None and seen["lagReadAt"]
    assert sorted((p["topic"], p["partition"]) for p in parts) == sorted(
        (topic, i) for topic in t.sources for i in range(PARTITIONS)
    )
    # The server's own auth.login events may or may not have reached the broker yet.
    assert seen["lagTotal"] == sum(p["lag"] for p in parts) >= len(events)
    for p in parts:
        assert p["group"] == f"{prefix}-group"
        assert (p["nextOffset"], p["updatedAt"]) == (0, None)
        assert p["lag"] == p["highWatermark"]

    def our_gauge(want: int) -> dict[tuple[str, str], float] | None:
        samples = gauge(server.url, prefix)
        mine = {k: v for k, v in (samples or {}).items() if k[0] != t.user_actions}
        return samples if mine and sum(mine.values()) == want else None

    samples = until(lambda: our_gauge(len(events)), timeout=10, what="gauge 300", log=server.log)
    assert len(samples) == 3 * PARTITIONS

    consumer = ConsumerProcess(tmp_path, base_env(tmp_path, **settings), "drain").start()
    try:
        wait_until(lambda: total(pg_url) >= len(events), timeout=60, what="300", log=consumer.log)
        drained = until(
            lambda: (s := status(server)) and our_lag(s, prefix) == 0 and s,
            timeout=10,
            what="lag 0",
            log=server.log,
        )
        applied = ours(drained["consumers"], prefix)
        assert sum(p["nextOffset"] for p in applied) == len(events)
        assert all(p["nextOffset"] == p["highWatermark"] for p in applied)
        until(lambda: our_gauge(0), timeout=10, what="server gauge 0", log=server.log)
    finally:
        consumer.stop()


def test_a_consumer_gauge_is_right_before_its_first_batch(
    tmp_path: Path, pg_url: str, kafka_bootstrap: str
) -> None:
    prefix = new_prefix()
    # tansu holds a JoinGroup for half the session timeout: 5 s here, during which
    # the consumer has fetched nothing and its gauge must already be right.
    settings = cluster_settings(pg_url, kafka_bootstrap, prefix, kafka_session_timeout_ms="10000")
    env = base_env(tmp_path, **settings)
    migrate = ServerProcess(tmp_path, env)
    migrate.cli("migrate")
    events = make_events(200, seed=22)
    asyncio.run(produce(kafka_bootstrap, topics_for(prefix), events))
    port = free_port()
    metrics = f"http://127.0.0.1:{port}"
    consumer = ConsumerProcess(tmp_path, env, "gauge", ("--metrics-port", str(port))).start()
    try:

        def first_gauge() -> tuple[dict[tuple[str, str], float], float] | None:
            try:
                samples = gauge(metrics, prefix)
                return (samples, applied_by(metrics)) if samples else None
            except httpx.TransportError:
                return None

        samples, applied = until(first_gauge, timeout=20, what="gauge", log=consumer.log)
        assert applied == 0, "the first batch came before the gauge"
        assert len(samples) == 3 * PARTITIONS
        assert sum(samples.values()) == len(events)
        wait_until(lambda: total(pg_url) >= len(events), timeout=60, what="200", log=consumer.log)
        until(
            lambda: (g := gauge(metrics, prefix)) and sum(g.values()) == 0,
            timeout=10,
            what="consumer gauge 0",
            log=consumer.log,
        )
    finally:
        consumer.stop()


def test_stall_alert_fires_once_when_the_consumer_stops_with_a_backlog(
    tmp_path: Path,
    pg_url: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    make_server: Callable[..., ServerProcess],
) -> None:
    prefix = new_prefix()
    settings = cluster_settings(
        pg_url,
        kafka_bootstrap,
        prefix,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        consumer_lag_interval_seconds="0.3",
        alert_consumer_stall_seconds="2",
        alert_consumer_lag="50",
    )
    first = make_server(**settings)
    first.cli("migrate")
    servers = [first.start(), make_server(**settings).start()]  # both check the rules
    topics = topics_for(prefix)
    consumer = ConsumerProcess(tmp_path, base_env(tmp_path, **settings), "stall").start()
    try:
        warm = make_events(30, seed=23)
        asyncio.run(produce(kafka_bootstrap, topics, warm))
        wait_until(lambda: total(pg_url) >= 30, timeout=60, what="30", log=consumer.log)
    finally:
        consumer.stop(signal.SIGTERM)
    backlog = make_events(120, seed=24)

    async def watch() -> list[dict[str, Any]]:
        async with connect(servers[0].ws_url) as admin:
            assert (await admin.init(token("nw-admin")))["type"] == "connection_ack"
            await admin.subscribe(CHANNEL, {"name": "system:status"})
            await asyncio.sleep(0.3)  # subscribed before the backlog exists
            await produce(kafka_bootstrap, topics, backlog)
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    got.append((await admin.next_data(wait=1.0))["channel"])
                except TimeoutError:
                    if any(_rule(m) == "consumer_stall" for m in got):
                        break  # and nothing more came for a second
            try:  # once per episode, whichever server saw it first
                while True:
                    got.append((await admin.next_data(wait=2.0))["channel"])
            except TimeoutError:
                return got

    got = asyncio.run(watch())
    assert all(m["kind"] == "analytics.alert" and m["channel"] == "system:status" for m in got)
    stalls = [m["data"]["alert"] for m in got if _rule(m) == "consumer_stall"]
    lags = [m["data"]["alert"] for m in got if _rule(m) == "consumer_lag"]
    assert len(stalls) == 1, (got, servers[0].log())
    assert stalls[0]["subject"] == f"{prefix}-group"
    # The backlog, and the server's own events since (this admin's login...).
    assert stalls[0]["value"] >= len(backlog) and stalls[0]["threshold"] == 2
    assert stalls[0]["partitions"], stalls
    # Lag over the threshold is its own rule; per minute bucket, so two servers can each
    # raise it once if their first looks straddle a minute boundary.
    assert 1 <= len(lags) <= 2 and lags[0]["value"] >= len(backlog), got
    assert lags[0]["threshold"] == 50


def _rule(message: dict[str, Any]) -> str | None:
    data = message.get("data") or {}
    alert = data.get("alert") if isinstance(data, dict) else None
    return alert.get("rule") if isinstance(alert, dict) else None


def recording_assignor(calls: list[str], name: str) -> type[RoundRobinPartitionAssignor]:
    """aiokafka's round robin, noting that ``name`` assigned: only the leader does."""

    class Recording(RoundRobinPartitionAssignor):  # type: ignore[misc]
        @classmethod
        def assign(cls, cluster: Any, members: Any) -> Any:
            calls.append(name)
            return super().assign(cluster, members)

    return Recording


async def stop_follower_then_leader(bootstrap: str, topic: str, group: str, leave: bool) -> None:
    """Two members in generation 1 or later (the one aiokafka leaves from), stopped
    follower first and leader right after, then a third member must join."""
    calls: list[str] = []
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "session_timeout_ms": 4000,
        "heartbeat_interval_ms": 1500,  # the leader must not see the follower leave
        "leave_group": leave,
    }
    members = {
        name: GroupConsumer(
            topic, partition_assignment_strategy=(recording_assignor(calls, name),), **config
        )
        for name in ("a", "b")
    }
    await members["a"].start()
    await members["b"].start()  # a rebalance: generation >= 1
    for _ in range(400):  # a's rejoin completes after b's start() returns
        if members["a"].assignment() and members["b"].assignment():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the two members never shared the partitions")
    leader = calls[-1]
    follower = "b" if leader == "a" else "a"
    await members[follower].stop()
    await members[leader].stop()
    third = GroupConsumer(topic, **{**config, "leave_group": False})
    try:
        await asyncio.wait_for(third.start(), 40)  # stranded: it never joins
        assert third.assignment()
    finally:
        await third.stop()


async def test_a_group_stopped_follower_first_starts_again(kafka_bootstrap: str) -> None:
    """tansu keeps a leader that leaves while its group re-forms (a follower left
    just before) as the leader for good: every later join waited for its
    assignment, forever. aiokafka leaves on close from generation 1; our consumers
    do not leave on tansu (streams/kafka_group.py), members expire instead."""
    prefix = new_prefix()
    topic = f"{prefix}-restart"
    await ensure_topics(kafka_bootstrap, [topic], 2)
    await stop_follower_then_leader(kafka_bootstrap, topic, f"{prefix}-group", leave=False)


def test_embedded_mode_lag_is_zero_by_construction(embedded_server: ServerProcess) -> None:
    """The in-process log numbers an event when it applies it: nothing waits."""
    status(embedded_server)  # this request's own login event is applied in ~50 ms
    time.sleep(0.3)
    seen = status(embedded_server)
    assert seen["lagTotal"] == 0 and seen["lagError"] is None
    assert [(p["topic"], p["lag"]) for p in seen["consumers"]] == [("memory", 0)]
    (memory,) = seen["consumers"]
    assert memory["highWatermark"] == memory["nextOffset"] > 0
