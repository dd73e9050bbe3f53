"""Deployment-wide delivery numbers and presence history, against real processes.

Cluster mode: two server processes on one Redis (and Postgres) deliver messages;
``systemStatus.delivery`` and ``liveMetrics.delivery`` show their sum and a latency
inside the buckets the clients' own measurements allow; a killed process drops out
and a restarted one counts nothing twice. Presence is sampled once per interval for
the whole deployment (a one-second interval here), with the ACL of ``presence``.
Embedded mode (memory stores) the same, with one process.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from streams.latency import LATENCY_BUCKETS
from tests.gqlws import TRANSPORT_WS, GraphQLWS, connect
from tests.integration.test_embedded_ws import MATH_101, publish, subscribed
from tests.server import ServerProcess, token

Make = Callable[..., ServerProcess]
FAST = {
    "delivery_stats_flush_seconds": "0.2",
    "delivery_stats_report_window_seconds": "3",
    "presence_history_interval_seconds": "1",
}
STATUS = """{ systemStatus { delivery {
  current { since delivered serverProcesses latency { p50Ms p95Ms p99Ms } }
  minutes { at processes delivered latency { p99Ms } } } } }"""
LIVE = """subscription($id: ID!) { liveMetrics(institutionId: $id) {
  delivery { delivered serverProcesses latency { p50Ms p95Ms p99Ms } } } }"""
PRESENCE = "subscription($c: String!) { presence(channel: $c) { type memberCount } }"
HISTORY = """query($c: String!, $m: Int!) { presenceHistory(channel: $c, minutes: $m) {
  at online } }"""
ONLINE_HISTORY = """query($m: Int!) { onlineCountHistory(institutionId: "northwood",
  minutes: $m) { at online } }"""
WAIT_S = 20.0


async def status(server: ServerProcess) -> dict[str, Any]:
    answer = await asyncio.to_thread(server.graphql, STATUS, as_user="nw-admin")
    assert "errors" not in answer, answer
    delivery: dict[str, Any] = answer["data"]["systemStatus"]["delivery"]  # type: ignore[index]
    return delivery


async def eventually(
    server: ServerProcess, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """systemStatus.delivery once ``check`` holds (flushes land every 0.2 s)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        delivery = await status(server)
        if check(delivery):
            return delivery
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {delivery}")
        await asyncio.sleep(0.2)


@asynccontextmanager
async def subscribers(server: ServerProcess, n: int) -> AsyncIterator[list[GraphQLWS]]:
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(server.ws_url)) for _ in range(n)]
        for client in clients:
            await subscribed(client, "nw-cy", MATH_101)
        yield clients


async def receive(clients: list[GraphQLWS], messages: int) -> float:
    """Every message on every client; the longest publishedAt-to-received seen (s),
    an upper bound of the server's own publish-to-hand-off latency."""
    longest = 0.0
    for client in clients:
        for _ in range(messages):
            event = (await client.next_data())["channel"]
            sent = datetime.fromisoformat(event["publishedAt"]).timestamp()
            longest = max(longest, time.time() - sent)
    return longest


def within_buckets(latency: dict[str, float], longest_s: float) -> None:
    """Interpolation stays inside the bucket: no percentile can pass the upper bound
    of the bucket holding the slowest delivery."""
    index = bisect.bisect_left(LATENCY_BUCKETS, longest_s)
    ceiling_ms = LATENCY_BUCKETS[min(index, len(LATENCY_BUCKETS) - 1)] * 1000
    assert 0 < latency["p50Ms"] <= latency["p95Ms"] <= latency["p99Ms"] <= ceiling_ms, (
        latency,
        longest_s,
    )


def samples_written(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "edumatrix_presence_samples":
            return {
                s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")
            }
    raise AssertionError("edumatrix_presence_samples_total is not exported")


@pytest.fixture
def cluster(
    make_server: Make, pg_url: str, redis_url: str, redis_prefix: str
) -> list[ServerProcess]:
    settings = {
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        **FAST,
    }
    first = make_server(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make_server(**settings).start()]


async def test_two_processes_deliveries_are_summed_and_a_killed_one_drops_out(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    await eventually(a, lambda d: d["current"]["serverProcesses"] == 2)
    before = await status(a)
    assert before["current"]["delivered"] == 0 and before["current"]["latency"] is None
    assert len(before["minutes"]) == 61

    async with subscribers(a, 2) as on_a, subscribers(b, 3) as on_b:
        for i in range(4):
            await publish(a if i % 2 else b, "nw-ada", MATH_101, f"delivery {i}")
        longest = max(await receive(on_a, 4), await receive(on_b, 4))
        expected = 4 * (2 + 3)
        # Either process answers with the deployment's sum.
        delivery = await eventually(b, lambda d: d["current"]["delivered"] == expected)
        within_buckets(delivery["current"]["latency"], longest)
        assert delivery["current"]["serverProcesses"] == 2
        assert sum(m["delivered"] or 0 for m in delivery["minutes"][-2:]) == expected
        assert delivery["minutes"][-1]["processes"] == 2
        # liveMetrics carries the same numbers.
        async with connect(a.ws_url, TRANSPORT_WS) as admin:
            assert (await admin.init(token("nw-admin")))["type"] == "connection_ack"
            await admin.subscribe(LIVE, {"id": "northwood"})
            live = (await admin.next_data())["liveMetrics"]["delivery"]
        assert live["delivered"] == expected and live["serverProcesses"] == 2
        within_buckets(live["latency"], longest)

        # b is killed: it stops reporting, and only a's deliveries count from now on.
        await asyncio.to_thread(b.kill)
        await eventually(a, lambda d: d["current"]["serverProcesses"] == 1)
        await publish(a, "nw-ada", MATH_101, "after the kill")
        await receive(on_a, 1)
        await eventually(a, lambda d: d["current"]["delivered"] == expected + 2)

    # Restarted, b is a new process counting from zero: nothing is counted twice.
    await asyncio.to_thread(b.start)
    await eventually(a, lambda d: d["current"]["serverProcesses"] == 2)
    await asyncio.sleep(1.0)  # several flushes of both processes
    for server in (a, b):
        hour = (await status(server))["minutes"]
        assert sum(m["delivered"] or 0 for m in hour) == expected + 2


async def test_presence_is_sampled_once_per_interval_by_two_processes(
    cluster: list[ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    a, b = cluster
    async with connect(a.ws_url) as cy, connect(b.ws_url) as ada:
        for client, user in ((cy, "nw-cy"), (ada, "nw-ada")):
            assert (await client.init(token(user)))["type"] == "connection_ack"
            await client.subscribe(PRESENCE, {"c": MATH_101})
            await client.next_data()  # SNAPSHOT: present from now on

        # Until three samples in a row show both of them (a second per sample).
        deadline = time.monotonic() + WAIT_S
        while True:
            answer = await asyncio.to_thread(
                a.graphql, HISTORY, {"c": MATH_101, "m": 1}, as_user="nw-cy"
            )
            points = answer["data"]["presenceHistory"]  # type: ignore[index]
            if [p["online"] for p in points[-3:]] == [2, 2, 2]:
                break
            assert time.monotonic() < deadline, points
            await asyncio.sleep(0.5)
        assert len(points) == 60  # a minute of one-second samples, gaps as null
        stamps = [datetime.fromisoformat(p["at"]).timestamp() for p in points]
        assert all(later - earlier == 1 for earlier, later in zip(stamps, stamps[1:], strict=False))
        online = await asyncio.to_thread(a.graphql, ONLINE_HISTORY, {"m": 1}, as_user="nw-cy")
        assert [p["online"] for p in online["data"]["onlineCountHistory"][-3:]] == [2, 2, 2]  # type: ignore[index]

    # One sample per slot: what the two processes say they wrote is what Redis holds.
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        written = [samples_written(s) for s in (a, b)]
        keys = [k async for k in client.scan_iter(f"{redis_prefix}:{{metrics}}:p:*", count=1000)]
        stored = len(keys)
        after = [samples_written(s) for s in (a, b)]
        writers = {await client.hget(k, "@by") for k in keys}
        ttl = await client.ttl(keys[0])
    finally:
        await client.aclose()
    assert sum(w["written"] for w in written) <= stored <= sum(w["written"] for w in after)
    assert sum(w["taken"] for w in after) > 0  # the other process found slots taken
    assert len(writers) <= 2 and None not in writers
    assert 3500 < ttl <= 3603  # kept an hour and two intervals from its write


async def test_presence_history_has_the_acl_of_presence(cluster: list[ServerProcess]) -> None:
    a, _ = cluster
    science = "institution:northwood:department:nw-science"
    cases = [
        (HISTORY, {"c": science, "m": 60}, "nw-cy", "FORBIDDEN"),  # another department
        (HISTORY, {"c": "institution:riverside", "m": 60}, "nw-cy", "FORBIDDEN"),
        (HISTORY, {"c": "no such channel", "m": 60}, "nw-cy", "BAD_CHANNEL"),
        (HISTORY, {"c": "user:nw-cy", "m": 60}, "nw-cy", "BAD_INPUT"),  # not kept
        (HISTORY, {"c": MATH_101, "m": 61}, "nw-cy", "BAD_INPUT"),
        (HISTORY, {"c": MATH_101, "m": 60}, None, "UNAUTHENTICATED"),
        (ONLINE_HISTORY.replace("northwood", "riverside"), {"m": 5}, "nw-cy", "NOT_FOUND"),
    ]
    for query, variables, user, code in cases:
        answer = await asyncio.to_thread(a.graphql, query, variables, as_user=user)
        assert answer["data"] == {query.split("{")[1].split("(")[0].strip(): None}, answer
        assert answer["errors"][0]["extensions"]["code"] == code, (variables, answer)  # type: ignore[index]
    # Allowed: her own department's channel (as Query.presence), and a teacher's.
    for user, channel in (
        ("nw-cy", "institution:northwood:department:nw-math"),
        ("nw-bo", science),
    ):
        answer = await asyncio.to_thread(a.graphql, HISTORY, {"c": channel, "m": 2}, as_user=user)
        assert "errors" not in answer and len(answer["data"]["presenceHistory"]) >= 119  # type: ignore[index]
    # Delivery numbers are for the roles that see liveMetrics: admins and services.
    answer = await asyncio.to_thread(a.graphql, STATUS, as_user="nw-ada")
    assert answer["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # type: ignore[index]


async def test_embedded_mode_keeps_both_in_memory(make_server: Make) -> None:
    server = make_server(**FAST)
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with subscribers(server, 2) as clients:
        for i in range(3):
            await publish(server, "nw-ada", MATH_101, f"embedded {i}")
        longest = await receive(clients, 3)
        delivery = await eventually(server, lambda d: d["current"]["delivered"] == 6)
        assert delivery["current"]["serverProcesses"] == 1
        within_buckets(delivery["current"]["latency"], longest)

        deadline = time.monotonic() + WAIT_S
        while True:
            answer = await asyncio.to_thread(
                server.graphql, ONLINE_HISTORY, {"m": 1}, as_user="nw-admin"
            )
            points = answer["data"]["onlineCountHistory"]  # type: ignore[index]
            # The two subscribers are not present (a channel subscription is not
            # presence); nobody is online, and the samples say 0, not null.
            if len(points) == 60 and [p["online"] for p in points[-2:]] == [0, 0]:
                break
            assert time.monotonic() < deadline, points
            await asyncio.sleep(0.5)
    written = samples_written(server)
    assert written["written"] >= 2 and written["taken"] == 0 and written["failed"] == 0
