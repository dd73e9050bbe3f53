"""A minimal GraphQL-over-WebSocket client for tests, speaking both protocols on a
real socket (the ``websockets`` library), so tests see exactly what clients see."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class GraphQLWS:
    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self._ids = itertools.count(1)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        """Next protocol message other than keep-alives; raises Closed on close."""
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), wait)
            except websockets.ConnectionClosed as exc:
                rcvd = exc.rcvd
                raise Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from exc
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") in ("ka", "ping", "pong"):
                if message["type"] == "ping":
                    await self.send({"type": "pong"})
                continue
            return message

    async def init(self, token: str | None, *, key: str = "authorization") -> dict[str, Any]:
        payload = {key: f"Bearer {token}"} if token else {}
        await self.send({"type": "connection_init", "payload": payload})
        return await self.recv()

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        op_id = str(next(self._ids))
        payload = {"query": query, "variables": variables or {}}
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        await self.send({"id": op_id, "type": kind, "payload": payload})
        return op_id

    async def next_data(self, wait: float = 5.0) -> dict[str, Any]:
        """The next data payload; raises AssertionError on an error message."""
        message = await self.recv(wait)
        if message["type"] in ("next", "data"):
            payload: dict[str, Any] = message["payload"]
            if payload.get("errors"):
                raise AssertionError(f"errors in payload: {payload['errors']}")
            return payload["data"]
        raise AssertionError(f"expected data, got {message}")

    async def close(self) -> None:
        await self.ws.close()


@asynccontextmanager
async def connect(url: str, protocol: str = TRANSPORT_WS) -> AsyncIterator[GraphQLWS]:
    async with websockets.connect(url, subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        yield GraphQLWS(ws, protocol)
