"""Presence helpers for tests: subscribe over a real WebSocket, read typed events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.gqlws import TRANSPORT_WS, GraphQLWS, connect
from tests.server import ServerProcess, token

PRESENCE = """
subscription($channel: String!) {
  presence(channel: $channel) {
    type channel memberCount
    member { userId displayName role status message connections }
    snapshot { memberCount connectionCount members { userId status connections } }
  }
}"""
SNAPSHOT = """
query($channel: String!) {
  presence(channel: $channel) { memberCount connectionCount members { userId connections } }
}"""


@asynccontextmanager
async def present(
    server: ServerProcess, user: str, channel: str, protocol: str = TRANSPORT_WS
) -> AsyncIterator[tuple[GraphQLWS, dict[str, Any]]]:
    """A client of ``user`` present on ``channel``, and the SNAPSHOT it got first."""
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(token(user)))["type"] == "connection_ack"
        await client.subscribe(PRESENCE, {"channel": channel})
        first = await next_event(client)
        assert first["type"] == "SNAPSHOT", first
        yield client, first["snapshot"]


async def next_event(client: GraphQLWS, wait: float = 5.0) -> dict[str, Any]:
    data = await client.next_data(wait)
    event: dict[str, Any] = data["presence"]
    return event


async def members(server: ServerProcess, user: str, channel: str) -> dict[str, int]:
    """user id -> connection count, from Query.presence."""
    result = await asyncio.to_thread(server.graphql, SNAPSHOT, {"channel": channel}, as_user=user)
    assert "errors" not in result, result
    snap: dict[str, Any] = result["data"]["presence"]  # type: ignore[index]
    return {m["userId"]: m["connections"] for m in snap["members"]}


async def until_members(
    server: ServerProcess, user: str, channel: str, expected: dict[str, int], wait: float = 5.0
) -> None:
    """Poll Query.presence (bounded) until it shows ``expected``."""
    got: dict[str, int] = {}
    for _ in range(int(wait / 0.05)):
        got = await members(server, user, channel)
        if got == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"presence of {channel} stayed {got}, expected {expected}")


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors", [])]
