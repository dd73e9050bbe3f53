"""Laravel Echo 2 (its pusher connector over pusher-js 8, in Node) against a real
server: private channels with `.listen`, presence with here/joining/leaving, whispers,
and a refused channel through Echo's `.error`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from tests import pusher_clients
from tests.integration.test_embedded_ws import publish
from tests.pusher_clients import KEY, NodeClient
from tests.server import ServerProcess, token

pusher_server = pusher_clients.pusher_server  # the module's server (a fixture)


def kind(name: str, what: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("name") == name and line.get("kind") == what


@asynccontextmanager
async def echo(server: ServerProcess, user: str) -> AsyncIterator[NodeClient]:
    config = {"port": server.port, "key": KEY, "token": token(user)}
    client = await asyncio.to_thread(NodeClient, "echo_client.mjs", config)
    try:
        await client.await_for(lambda line: "connected" in line)
        yield client
    finally:
        await asyncio.to_thread(client.stop)


async def test_echo_private_channel_listens_to_announcements(
    pusher_server: ServerProcess,
) -> None:
    name = "institution.northwood.classroom.nw-math-101"
    async with echo(pusher_server, "nw-cy") as cy:
        cy.send(op="private", name=name, listen=".announcement")
        await cy.await_for(kind(name, "subscribed"))
        sent = await publish(
            pusher_server, "nw-ada", "institution:northwood:classroom:nw-math-101", "Echo"
        )
        got = await cy.await_for(kind(name, "event"))
    assert got["data"]["announcement"]["id"] == sent["id"]


async def test_echo_reports_a_refused_channel(pusher_server: ServerProcess) -> None:
    name = "institution.northwood.classroom.nw-sci-201"
    async with echo(pusher_server, "nw-cy") as cy:
        cy.send(op="private", name=name, listen=".announcement")
        error = await cy.await_for(kind(name, "error"))
    assert error["data"]["status"] == 403


async def test_echo_presence_here_joining_whisper_leaving(pusher_server: ServerProcess) -> None:
    name = "institution.northwood.department.nw-science"
    async with echo(pusher_server, "nw-bo") as bo:
        bo.send(op="join", name=name, whisper="typing")
        here = await bo.await_for(kind(name, "here"))
        assert [u["displayName"] for u in here["data"]] == ["Bo Bunsen"]
        async with echo(pusher_server, "nw-dee") as dee:
            dee.send(op="join", name=name, whisper="typing")
            both = await dee.await_for(kind(name, "here"))
            assert sorted(u["displayName"] for u in both["data"]) == ["Bo Bunsen", "Dee Student"]
            joining = await bo.await_for(kind(name, "joining"))
            assert joining["data"]["displayName"] == "Dee Student"
            dee.send(op="whisper", name=name, event="typing", data={"who": "dee"})
            whisper = await bo.await_for(kind(name, "whisper"))
            assert whisper["data"] == {"who": "dee"}
            dee.send(op="leave", name=name)
            leaving = await bo.await_for(kind(name, "leaving"))
            assert leaving["data"]["displayName"] == "Dee Student"
