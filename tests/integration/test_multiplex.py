"""Multiplexed delivery gives every subscriber exactly what per-subscriber execution
gives, viewer-dependent fields included, and shares work only where it may."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, Closed, GraphQLWS, connect
from tests.integration.test_embedded_ws import MATH_101, publish
from tests.server import ServerProcess, base_env, token

FULL = """
subscription Watch($name: String!) {
  channel(name: $name) {
    offset epoch channel kind publishedAt recovered fromMe
    announcement { id channel authorId title body priority createdAt }
  }
}"""
SHARED = "subscription($n: String!) { channel(name: $n) { offset announcement { title } } }"
USERS = ("nw-ada", "nw-cy", "nw-admin")


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} missing")


def groups(server: ServerProcess) -> float:
    return metric(server, "edumatrix_multiplex_groups")


async def ready(client: GraphQLWS, user: str, query: str, variables: dict[str, Any]) -> str:
    assert (await client.init(token(user)))["type"] == "connection_ack"
    return await client.subscribe(query, variables)


@pytest.mark.fast_paths
async def test_multiplexed_equals_per_subscriber_execution(embedded_server: ServerProcess) -> None:
    """graphql-transport-ws goes through the multiplexer; legacy graphql-ws through
    Strawberry's own per-subscriber execution. Same viewer, same bytes of data."""
    clients: dict[tuple[str, str], GraphQLWS] = {}
    contexts = []
    for user in USERS:
        for protocol in (TRANSPORT_WS, LEGACY_WS):
            ctx = connect(embedded_server.ws_url, protocol)
            contexts.append(ctx)
            client = await ctx.__aenter__()
            await ready(client, user, FULL, {"name": MATH_101})
            clients[(user, protocol)] = client
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(httpx.get, f"{embedded_server.url}/healthz")
        assert await asyncio.to_thread(groups, embedded_server) == 3  # fromMe: per viewer
        # ...and their frames are written straight to the socket (api/rawsocket.py).
        direct = 'edumatrix_multiplex_connections{write="direct"}'
        assert await asyncio.to_thread(metric, embedded_server, direct) >= 3
        for title in ("one", "two"):
            await publish(embedded_server, "nw-ada", MATH_101, title)
        for user in USERS:
            muxed = [await clients[(user, TRANSPORT_WS)].next_data() for _ in range(2)]
            plain = [await clients[(user, LEGACY_WS)].next_data() for _ in range(2)]
            assert muxed == plain
            assert [m["channel"]["fromMe"] for m in muxed] == [user == "nw-ada"] * 2
            assert [m["channel"]["announcement"]["title"] for m in muxed] == ["one", "two"]
    finally:
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)


@pytest.mark.fast_paths
async def test_viewer_independent_documents_share_one_group(
    embedded_server: ServerProcess,
) -> None:
    async with (
        connect(embedded_server.ws_url) as a,
        connect(embedded_server.ws_url) as b,
        connect(embedded_server.ws_url) as c,
    ):
        before = await asyncio.to_thread(groups, embedded_server)
        for client, user in ((a, "nw-ada"), (b, "nw-cy"), (c, "nw-admin")):
            await ready(client, user, SHARED, {"n": MATH_101})
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(groups, embedded_server) == before + 1
        await publish(embedded_server, "nw-ada", MATH_101, "shared")
        got = [await client.next_data() for client in (a, b, c)]
        assert got[0] == got[1] == got[2]
        assert got[0]["channel"]["announcement"]["title"] == "shared"


async def test_complete_stops_one_subscription_only(embedded_server: ServerProcess) -> None:
    async with connect(embedded_server.ws_url) as client:
        first = await ready(client, "nw-cy", SHARED, {"n": MATH_101})
        second = await client.subscribe(SHARED, {"n": "institution:northwood"})
        await asyncio.sleep(0.2)
        await client.send({"id": first, "type": "complete"})
        await asyncio.sleep(0.2)
        await publish(embedded_server, "nw-ada", MATH_101, "to-math")
        await publish(embedded_server, "nw-admin", "institution:northwood", "to-all")
        message = await client.recv()
        assert message["id"] == second
        assert message["payload"]["data"]["channel"]["announcement"]["title"] == "to-all"
        with pytest.raises(TimeoutError):
            await client.recv(wait=0.5)


async def test_duplicate_operation_id_closes_4409(embedded_server: ServerProcess) -> None:
    async with connect(embedded_server.ws_url) as client:
        await ready(client, "nw-cy", SHARED, {"n": MATH_101})
        await client.send(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": SHARED, "variables": {"n": MATH_101}},
            }
        )
        with pytest.raises(Closed) as closed:
            await client.recv()
    assert closed.value.code == 4409


async def test_documents_the_planner_declines_still_work(embedded_server: ServerProcess) -> None:
    spread = (
        "subscription($n: String!) { ...Watch } "
        "fragment Watch on Subscription { channel(name: $n) { offset announcement { title } } }"
    )
    async with connect(embedded_server.ws_url) as client:
        await ready(client, "nw-cy", spread, {"n": MATH_101})
        bad = await client.subscribe("subscription { channel(name: 1) { nope } }")
        error = await client.recv()
        assert error["id"] == bad and error["type"] == "error"
        await asyncio.sleep(0.2)
        await publish(embedded_server, "nw-ada", MATH_101, "via strawberry")
        data = await client.next_data()
    assert data["channel"]["announcement"]["title"] == "via strawberry"


# SHARED, but Strawberry serves it itself: the planner declines a root field inside
# an inline fragment.
VIA_STRAWBERRY = (
    "subscription($n: String!) { ... on Subscription { channel(name: $n) { offset } } }"
)


@pytest.fixture(scope="module")
def two_per_connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with a limit of two subscriptions per connection, for every order
    below: the limit is per connection, and each order opens its own."""
    workdir = tmp_path_factory.mktemp("two-per-connection")
    server = ServerProcess(workdir, base_env(workdir, max_subscriptions_per_connection="2"))
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("order", ["MMM", "MMS", "MSS", "SMM", "SSM", "SMS", "SSS"])
async def test_subscription_limit_counts_both_paths(
    two_per_connection: ServerProcess, order: str
) -> None:
    """One limit for multiplexed (M) and Strawberry-served (S) subscriptions together,
    in any order; the refusal is Strawberry's own frame, and ``complete`` on either
    path frees a place."""
    server = two_per_connection
    documents = {"M": SHARED, "S": VIA_STRAWBERRY}
    channels = (MATH_101, "institution:northwood", "institution:northwood:alerts")
    async with connect(server.ws_url) as client:
        assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
        ids = [
            await client.subscribe(documents[kind], {"n": channel})
            for kind, channel in zip(order, channels, strict=True)
        ]
        message = await client.recv()
        assert message == {
            "id": ids[2],
            "type": "error",
            "payload": [{"message": "Subscription limit reached"}],
        }
        await client.send({"id": ids[0], "type": "complete"})
        await client.subscribe(documents[order[2]], {"n": channels[0]})
        with pytest.raises(TimeoutError):  # taken, so nothing to say until a publish
            await client.recv(wait=0.5)


@pytest.mark.fast_paths
async def test_compressed_connections_take_the_asgi_path(make_server: Any) -> None:
    """With permessage-deflate negotiated, frames cannot be written raw: the same
    subscriber gets the same data through the ASGI send path, compressed."""
    server: ServerProcess = make_server(ws_compression="true")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with connect(server.ws_url) as deflated, connect(server.ws_url, LEGACY_WS) as plain:
        assert deflated.ws.protocol.extensions  # the client offers deflate by default
        await ready(deflated, "nw-cy", FULL, {"name": MATH_101})
        await ready(plain, "nw-cy", FULL, {"name": MATH_101})
        await asyncio.sleep(0.3)
        asgi = 'edumatrix_multiplex_connections{write="asgi"}'
        assert await asyncio.to_thread(metric, server, asgi) == 1
        for title in ("one", "two"):
            await publish(server, "nw-ada", MATH_101, title)
        muxed = [await deflated.next_data() for _ in range(2)]
        legacy = [await plain.next_data() for _ in range(2)]
        assert muxed == legacy
