"""Queries and mutations over WebSockets, on both protocols.

subscriptions-transport-ws apps (the legacy ``graphql-ws`` protocol) send every
operation over the socket, and Python gql's WebSocket transports negotiate that
protocol first; graphql-transport-ws clients may too. Each gets one result (data,
or errors with a code) and then ``complete``, never a masked "Unexpected error.",
and a mutation sent this way is delivered to subscribers like one sent over HTTP.
Against the session's embedded server, in both passes of ``make test``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, GraphQLWS, connect
from tests.integration.test_embedded_ws import MATH_101, subscribed
from tests.server import ServerProcess, token

ME = "{ me { id role } }"
PUBLISH = """
mutation($c: String!, $t: String!) {
  publishAnnouncement(input: {channel: $c, title: $t, body: "b"}) { title channel }
}"""
OTHER_SCHOOL = '{ announcements(channel: "institution:riverside", last: 1) { title } }'


async def run(client: GraphQLWS, query: str, variables: dict[str, Any] | None = None) -> Any:
    """Send one operation; its single result and then its ``complete``."""
    op_id = await client.subscribe(query, variables)
    result = await client.recv()
    done = await client.recv()
    assert done == {"id": op_id, "type": "complete"}, done
    assert result["id"] == op_id
    return result


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_a_query_answers_once_then_completes(
    embedded_server: ServerProcess, protocol: str
) -> None:
    async with connect(embedded_server.ws_url, protocol) as client:
        await client.init(token("nw-cy"))
        result = await run(client, ME)
    assert result["type"] in ("data", "next")
    assert result["payload"] == {"data": {"me": {"id": "nw-cy", "role": "STUDENT"}}}


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_a_mutation_over_the_socket_reaches_subscribers(
    embedded_server: ServerProcess, protocol: str
) -> None:
    async with (
        connect(embedded_server.ws_url) as reader,
        connect(embedded_server.ws_url, protocol) as writer,
    ):
        await subscribed(reader, "nw-cy", MATH_101)
        await writer.init(token("nw-ada"))
        title = f"over {protocol}"
        result = await run(writer, PUBLISH, {"c": MATH_101, "t": title})
        assert result["payload"] == {
            "data": {"publishAnnouncement": {"title": title, "channel": MATH_101}}
        }
        got = await reader.next_data()
    assert got["channel"]["announcement"]["title"] == title


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_a_refused_query_says_why(embedded_server: ServerProcess, protocol: str) -> None:
    async with connect(embedded_server.ws_url, protocol) as client:
        await client.init(token("nw-cy"))
        result = await run(client, OTHER_SCHOOL)
    errors = result["payload"]["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], errors
    assert "Unexpected error" not in errors[0]["message"]


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_an_invalid_query_gets_graphqls_own_message(
    embedded_server: ServerProcess, protocol: str
) -> None:
    """A document that does not validate: GraphQL's message, not a masked one (an
    ``error`` message on graphql-transport-ws, errors in the one result on the
    legacy protocol, where subscriptions-transport-ws clients expect a result)."""
    async with connect(embedded_server.ws_url, protocol) as client:
        await client.init(token("nw-cy"))
        op_id = await client.subscribe("{ me { nope } }")
        message = await client.recv()
    assert message["id"] == op_id
    if protocol == TRANSPORT_WS:
        assert message["type"] == "error"
        errors = message["payload"]
    else:
        assert message["type"] == "data" and message["payload"]["data"] is None
        errors = message["payload"]["errors"]
    assert "nope" in errors[0]["message"], errors
