"""Two server processes on a real Redis Cluster (3 masters + replicas): a master
killed while announcements are published on every master loses nothing that was
acknowledged, the healthy shards' channels go on without a reset, and the servers
recover without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.gqlws import TRANSPORT_WS, GraphQLWS, connect
from tests.redis_cluster import RedisCluster
from tests.server import ServerProcess, token

Make = Callable[..., ServerProcess]
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

# One channel per master of the fixture's 3-master slot layout (checked below).
CHANNELS = [
    "institution:northwood:department:nw-science",  # slot 4100
    "institution:northwood",  # slot 7850
    "institution:northwood:classroom:nw-math-101",  # slot 11331
]
SUBSCRIBE = """
subscription($name: String!) {
  channel(name: $name) { offset epoch kind recovered announcement { id title } }
}"""
PUBLISH = """
mutation($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b"}) { id }
}"""


@pytest.fixture
def servers(
    make_server: Make, pg_url: str, redis_cluster: RedisCluster, redis_prefix: str
) -> list[ServerProcess]:
    settings = {
        "database_url": pg_url,
        "redis_url": redis_cluster.cluster_url,
        "redis_prefix": redis_prefix,
        "history_size": "5000",
    }
    first = make_server(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make_server(**settings).start()]


def master_of(cluster: RedisCluster, channel: str) -> int:
    return cluster.master_for_key(f"any:ch:{{{channel}}}").port


async def ready(server: ServerProcess) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{server.url}/readyz")).status_code


async def until_ready(server: ServerProcess, wait: float = 20.0) -> None:
    deadline = time.monotonic() + wait
    while (status := await ready(server)) != 200:
        assert time.monotonic() < deadline, f"{server.url} not ready: {status}"
        await asyncio.sleep(0.2)


async def next_message(client: GraphQLWS, wait: float) -> dict[str, Any]:
    """A subscription never ends silently: an error or a complete fails the test."""
    message = await client.recv(wait)
    assert message["type"] == "next" and not message["payload"].get("errors"), message
    return message


async def subscribe_all(client: GraphQLWS) -> dict[str, str]:
    """Operation id -> channel."""
    assert (await client.init(token("nw-admin")))["type"] == "connection_ack"
    ops = {}
    for channel in CHANNELS:
        ops[await client.subscribe(SUBSCRIBE, {"name": channel})] = channel
    await asyncio.sleep(0.3)
    return ops


async def test_a_master_killed_while_publishing_loses_no_acknowledged_message(
    servers: list[ServerProcess], redis_cluster: RedisCluster
) -> None:
    """Publishing to a channel on each master from one process, subscribed on the
    other. A kill is the harsher failure (the readers' connection breaks, a
    failover's unsubscribe is tested in process: test_redis_cluster_bus.py)."""
    a, b = servers
    assert len({master_of(redis_cluster, c) for c in CHANNELS}) == 3
    await until_ready(a)
    await until_ready(b)
    victim = master_of(redis_cluster, CHANNELS[2])
    acked: dict[str, list[str]] = {c: [] for c in CHANNELS}
    refused = 0
    during = 0  # rounds published while the shard was failing over

    def strike() -> None:
        redis_cluster.kill(victim)
        redis_cluster.wait_ok()  # its replica is promoted and every node agrees

    outage: list[asyncio.Task[None]] = []

    async def publish(channel: str) -> None:
        """Rounds before the strike, all through it, and 10 after (at most 500);
        each channel on its own, so the healthy shards' channels go on meanwhile."""
        nonlocal refused, during
        after = 0
        for r in range(500):
            if r == 10 and not outage:
                outage.append(asyncio.create_task(asyncio.to_thread(strike)))
            if outage and outage[0].done():
                after += 1
                if after > 10:
                    return
            elif outage:
                during += 1
            result = await asyncio.to_thread(
                a.graphql, PUBLISH, {"channel": channel, "title": f"{r}"}, as_user="nw-admin"
            )
            if "errors" in result:
                refused += 1  # not acknowledged: the client knows to retry
            else:
                acked[channel].append(result["data"]["publishAnnouncement"]["id"])  # type: ignore[index]
        raise AssertionError("the outage outlasted 500 rounds")

    async def publish_rounds() -> None:
        await asyncio.gather(*(publish(c) for c in CHANNELS))
        await outage[0]

    got: dict[str, list[dict[str, Any]]] = {c: [] for c in CHANNELS}
    try:
        async with connect(b.ws_url, TRANSPORT_WS) as client:
            ops = await subscribe_all(client)
            publisher = asyncio.create_task(publish_rounds())

            def missing() -> dict[str, set[str]]:
                out = {}
                for channel in CHANNELS:
                    seen = {e["announcement"]["id"] for e in got[channel] if e["announcement"]}
                    out[channel] = set(acked[channel]) - seen
                return out

            deadline = time.monotonic() + 120
            while not publisher.done() or any(missing().values()):
                assert time.monotonic() < deadline, (missing(), refused)
                try:
                    message = await next_message(client, wait=1)
                except TimeoutError:
                    continue
                got[ops[message["id"]]].append(message["payload"]["data"]["channel"])
            await publisher
        # The servers recovered without a restart.
        await until_ready(a)
        await until_ready(b)
    finally:
        await asyncio.to_thread(redis_cluster.revive, victim)
    assert during > 0, "nothing was published during the outage"
    print(
        f"kill: {during} rounds during the outage, {refused} refused, acked",
        {c: len(v) for c, v in acked.items()},
    )
    for channel in CHANNELS:
        items = got[channel]
        ids = [e["announcement"]["id"] for e in items if e["announcement"]]
        assert len(ids) == len(set(ids)), f"duplicates on {channel}"
        resets = [e for e in items if e["kind"] == "reset"]
        if channel != CHANNELS[2]:
            assert resets == [], f"a healthy shard's channel was reset: {channel}"
        # Offsets only grow within an epoch, whatever the outage did.
        for earlier, later in zip(items, items[1:], strict=False):
            if earlier["epoch"] == later["epoch"]:
                assert later["offset"] > earlier["offset"], (channel, earlier, later)
