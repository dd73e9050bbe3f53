"""Python's ``gql`` 4 client, as Python teams use it, against a real server.

Its default WebSocket transport offers both protocols and the server picks the
legacy ``graphql-ws`` (subscriptions-transport-ws) one, so queries and mutations
go over the socket as ``start`` messages, and a subscription shares the socket
with them. Its HTTP transport (httpx) sends plain GraphQL-over-HTTP POSTs.
Against the session's embedded server, in both passes of ``make test``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

from tests.integration.test_embedded_ws import MATH_101, publish
from tests.server import ServerProcess, token

ME = "{ me { id role } }"
POSITION = "query($name: String!) { channelPosition(name: $name) { offset epoch } }"
PUBLISH = """
mutation($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b"}) { id title channel }
}"""
CHANNEL = """
subscription($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) {
    offset epoch kind recovered fromMe announcement { id title }
  }
}"""
OTHER_SCHOOL = '{ announcements(channel: "institution:riverside", last: 1) { title } }'
WAIT = 15.0  # generous: two cores shared with other suites


def request(document: str, **variables: Any) -> GraphQLRequest:
    return GraphQLRequest(document, variable_values=variables or None)


@asynccontextmanager
async def ws_session(
    server: ServerProcess, user: str
) -> AsyncIterator[tuple[AsyncClientSession, WebsocketsTransport]]:
    """gql's default WebSocket transport: default subprotocols, token in connection_init."""
    transport = WebsocketsTransport(
        url=server.ws_url, init_payload={"authorization": f"Bearer {token(user)}"}
    )
    async with Client(transport=transport, execute_timeout=WAIT) as session:
        yield session, transport


class Feed:
    """One gql subscription read by a task into a queue, so the test can wait for
    each event with a bound and check that nothing else arrived."""

    def __init__(self, session: AsyncClientSession, since: dict[str, Any]) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(session, since))

    async def _read(self, session: AsyncClientSession, since: dict[str, Any]) -> None:
        async for data in session.subscribe(request(CHANNEL, name=MATH_101, since=since)):
            await self.events.put(data["channel"])

    async def take(self, n: int) -> list[dict[str, Any]]:
        got = []
        for _ in range(n):
            get = asyncio.ensure_future(self.events.get())
            done, _ = await asyncio.wait(
                {get, self._task}, timeout=WAIT, return_when="FIRST_COMPLETED"
            )
            if get not in done:
                get.cancel()
                if self._task in done:
                    self._task.result()  # raises what ended the subscription
                    raise AssertionError(f"subscription completed after {got}")
                raise AssertionError(f"timed out after {got}")
            got.append(get.result())
        return got

    async def stop(self) -> list[dict[str, Any]]:
        """Stop the subscription (gql sends ``stop``); what arrived and was not taken."""
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task
        left = []
        while not self.events.empty():
            left.append(self.events.get_nowait())
        return left


def titles(events: list[dict[str, Any]]) -> list[str]:
    return [e["announcement"]["title"] for e in events]


async def test_default_websocket_transport_negotiates_the_legacy_protocol(
    embedded_server: ServerProcess,
) -> None:
    async with ws_session(embedded_server, "nw-cy") as (session, transport):
        # gql offers the legacy protocol first; the server takes the client's order.
        assert transport.adapter.subprotocols == ["graphql-ws", "graphql-transport-ws"]
        assert transport.subprotocol == "graphql-ws"
        me = await session.execute(request(ME))
        again = await session.execute(request(ME))
    assert me == again == {"me": {"id": "nw-cy", "role": "STUDENT"}}


async def test_a_refused_query_over_the_socket_raises_with_the_code(
    embedded_server: ServerProcess,
) -> None:
    async with ws_session(embedded_server, "nw-cy") as (session, _):
        with pytest.raises(TransportQueryError) as refused:
            await session.execute(request(OTHER_SCHOOL))
        # The socket survives a refused operation.
        assert await session.execute(request(ME)) == {"me": {"id": "nw-cy", "role": "STUDENT"}}
    errors = refused.value.errors or []
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], errors


async def test_subscription_gets_mutations_from_the_same_socket_then_resumes_with_since(
    embedded_server: ServerProcess,
) -> None:
    """A teacher's one gql socket carries the subscription and the mutations that
    feed it; after a disconnect, ``since`` brings exactly the missed ones, then live."""
    async with ws_session(embedded_server, "nw-ada") as (session, _):
        start = (await session.execute(request(POSITION, name=MATH_101)))["channelPosition"]
        # Subscribing from the current position: whatever is published from here on
        # arrives, replayed or live, whenever the server registers the subscription.
        feed = Feed(session, start)
        sent = []
        for title in ("gql one", "gql two"):
            result = await session.execute(request(PUBLISH, channel=MATH_101, title=title))
            sent.append(result["publishAnnouncement"])
        got = await feed.take(2)
        assert await feed.stop() == []

    assert [s["channel"] for s in sent] == [MATH_101, MATH_101]
    assert [e["announcement"]["id"] for e in got] == [s["id"] for s in sent]
    assert titles(got) == ["gql one", "gql two"]
    assert [e["offset"] for e in got] == [start["offset"] + 1, start["offset"] + 2]
    assert {e["epoch"] for e in got} == {start["epoch"]}
    assert all(e["kind"] == "announcement" and e["recovered"] and e["fromMe"] for e in got)

    missed = [f"missed {i}" for i in range(5)]
    for title in missed:  # while no gql client is connected, over HTTP
        await publish(embedded_server, "nw-ada", MATH_101, title)
    last = got[-1]
    async with ws_session(embedded_server, "nw-cy") as (session, transport):
        assert transport.subprotocol == "graphql-ws"
        feed = Feed(session, {"offset": last["offset"], "epoch": last["epoch"]})
        replayed = await feed.take(len(missed))
        await publish(embedded_server, "nw-ada", MATH_101, "live")
        live = await feed.take(1)
        # Exactly once: nothing after the live one (a duplicate would be here).
        await asyncio.sleep(0.3)
        assert await feed.stop() == []

    assert titles(replayed) == missed
    assert titles(live) == ["live"]
    resumed = replayed + live
    first = last["offset"] + 1
    assert [e["offset"] for e in resumed] == list(range(first, first + len(missed) + 1))
    assert {e["epoch"] for e in resumed} == {last["epoch"]}
    assert all(e["recovered"] and not e["fromMe"] for e in resumed)


async def test_http_transport_query_and_mutation(embedded_server: ServerProcess) -> None:
    def http(user: str) -> HTTPXAsyncTransport:
        return HTTPXAsyncTransport(
            url=f"{embedded_server.url}/graphql",
            headers={"Authorization": f"Bearer {token(user)}"},
            timeout=WAIT,
        )

    async with Client(transport=http("nw-cy")) as session:
        assert await session.execute(request(ME)) == {"me": {"id": "nw-cy", "role": "STUDENT"}}
        with pytest.raises(TransportQueryError) as refused:
            await session.execute(request(OTHER_SCHOOL))
    errors = refused.value.errors or []
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], errors

    async with Client(transport=http("nw-ada")) as session:
        result = await session.execute(request(PUBLISH, channel=MATH_101, title="over gql http"))
    assert result["publishAnnouncement"]["title"] == "over gql http"
    assert result["publishAnnouncement"]["channel"] == MATH_101
