"""Every malformed input gets a clear answer, on HTTP and both WebSocket protocols,
and nobody else's subscription notices.

Found by an attacker test: non-object JSON frames dropped the socket with no close
frame; an unparsable subscription got a bare ``complete`` (graphql-transport-ws)
or nothing (graphql-ws); an offset of 2^63, a lone surrogate or a NUL (Postgres)
gave "Unexpected error.".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, Closed, GraphQLWS, connect
from tests.server import ServerProcess, token

CLASSROOM = "institution:northwood:classroom:nw-math-101"
SUBSCRIBE = "subscription($c: String!) { channel(name: $c) { offset kind } }"
SINCE = (
    "subscription($c: String!, $o: Long!) "
    '{ channel(name: $c, since: {offset: $o, epoch: "e"}) { offset kind } }'
)
PUBLISH = """mutation($c: String!, $t: String!) {
  publishAnnouncement(input: {channel: $c, title: $t, body: "b"}) { id } }"""
NUL = "quiz\u0000friday"
SURROGATE = "quiz \ud800 friday"


@asynccontextmanager
async def client(server: ServerProcess, protocol: str) -> AsyncIterator[GraphQLWS]:
    async with connect(server.ws_url, protocol) as ws:
        assert (await ws.init(token("nw-cy")))["type"] == "connection_ack"
        yield ws


def raw_frame(variables: dict[str, Any], protocol: str, query: str = SUBSCRIBE) -> str:
    """A subscribe message as text: json.dumps escapes a lone surrogate as \\ud800,
    which is valid JSON and what a client sends."""
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return json.dumps(
        {"id": "bad", "type": kind, "payload": {"query": query, "variables": variables}}
    )


async def victim_still_served(server: ServerProcess, victim: GraphQLWS) -> None:
    """A publish after the bad inputs reaches a subscriber on another connection."""
    result = await asyncio.to_thread(
        server.graphql, PUBLISH, {"c": CLASSROOM, "t": "still here"}, as_user="nw-ada"
    )
    assert "errors" not in result, result
    data = await victim.next_data()
    assert data["channel"]["kind"] == "announcement"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize("frame", ["[1,2]", "null", "42", '"text"'])
async def test_a_frame_that_is_not_an_object_closes_with_4400(
    embedded_server: ServerProcess, protocol: str, frame: str
) -> None:
    async with client(embedded_server, TRANSPORT_WS) as victim:
        await victim.subscribe(SUBSCRIBE, {"c": CLASSROOM})
        async with client(embedded_server, protocol) as ws:
            await ws.ws.send(frame)
            with pytest.raises(Closed) as closed:
                await ws.recv()
            assert closed.value.code == 4400, closed.value
            assert "not a JSON object" in closed.value.reason
        await victim_still_served(embedded_server, victim)


async def test_a_document_that_does_not_parse_is_refused_with_its_reason(
    embedded_server: ServerProcess,
) -> None:
    query = "subscription {"
    # graphql-transport-ws: 4400 with the syntax error as the reason (Strawberry's
    # choice for a document that cannot be parsed), never a bare complete.
    async with client(embedded_server, TRANSPORT_WS) as ws:
        await ws.ws.send(raw_frame({}, TRANSPORT_WS, query))
        with pytest.raises(Closed) as closed:
            await ws.recv()
        assert closed.value.code == 4400 and "Syntax Error" in closed.value.reason
    # graphql-ws (legacy): an error message for the operation; the socket stays.
    async with client(embedded_server, LEGACY_WS) as ws:
        await ws.ws.send(raw_frame({}, LEGACY_WS, query))
        message = await ws.recv()
        assert (message["type"], message["id"]) == ("error", "bad"), message
        assert "Syntax Error" in json.dumps(message["payload"])
        await ws.subscribe(SUBSCRIBE, {"c": CLASSROOM})  # the connection still works
        with pytest.raises(TimeoutError):
            await ws.recv(wait=0.3)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize("text", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("where", ["variables", "document"])
async def test_unstorable_strings_are_bad_input(
    embedded_server: ServerProcess, protocol: str, text: str, where: str
) -> None:
    frame = (
        raw_frame({"c": text}, protocol)
        if where == "variables"
        else raw_frame({}, protocol, 'subscription { channel(name: "' + text + '") { offset } }')
    )
    async with client(embedded_server, protocol) as ws:
        await ws.subscribe(SUBSCRIBE, {"c": CLASSROOM})  # a healthy one beside it
        await ws.ws.send(frame)
        message = await ws.recv()
        assert (message["type"], message["id"]) == ("error", "bad"), message
        payload = message["payload"]
        error = payload[0] if isinstance(payload, list) else payload
        assert error["extensions"]["code"] == "BAD_INPUT"
        await victim_still_served(embedded_server, ws)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize("offset", [2**63, -1, 2**53, 1.5, "12"])
async def test_offsets_outside_the_long_range_are_refused(
    embedded_server: ServerProcess, protocol: str, offset: object
) -> None:
    async with client(embedded_server, protocol) as ws:
        await ws.ws.send(raw_frame({"c": CLASSROOM, "o": offset}, protocol, SINCE))
        message = await ws.recv()
        assert (message["type"], message["id"]) == ("error", "bad"), message
        assert "Long" in json.dumps(message["payload"]), message


@pytest.mark.parametrize("fast", ["true", "false"])
async def test_http_refuses_unstorable_strings_with_400(
    make_server: Callable[..., ServerProcess], tmp_path: Any, fast: str
) -> None:
    server = make_server(data_dir=str(tmp_path / fast), fast_paths=fast)
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    for text in (NUL, SURROGATE):
        body = json.dumps({"query": PUBLISH, "variables": {"c": CLASSROOM, "t": text}})
        response = await asyncio.to_thread(
            httpx.post,
            f"{server.url}/graphql",
            content=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token('nw-ada')}",
            },
        )
        assert response.status_code == 400, response.text
        assert "NUL characters or unpaired UTF-16 surrogates" in response.text
    # A paired surrogate (an emoji written as two escapes) is ordinary text.
    emoji = json.dumps({"query": PUBLISH, "variables": {"c": CLASSROOM, "t": "quiz \U0001f600"}})
    assert "\\ud83d\\ude00" in emoji  # json.dumps writes it as two escapes
    response = await asyncio.to_thread(
        httpx.post,
        f"{server.url}/graphql",
        content=emoji,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token('nw-ada')}"},
    )
    assert response.status_code == 200 and "errors" not in response.json(), response.text


@pytest.mark.parametrize("body", ["[1,2]", "null", "42", '"text"', "{"])
def test_http_bodies_that_are_not_a_request_object_are_400(
    embedded_server: ServerProcess, body: str
) -> None:
    response = httpx.post(
        f"{embedded_server.url}/graphql",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
