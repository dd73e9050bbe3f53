"""Direct frame writes for multiplexed fan-out, when the server allows them.

Why: one ``websocket.send_text`` goes Starlette → its exception wrapper → uvicorn's
ASGI ``send`` → the websockets state machine (frame object, serialisation, a
``data_to_send`` list) → ``transport.write``; with one writer task per connection
that was also a task wake-up per frame. At saturation that path was ~37% of the
server's CPU, for bytes that are the same for every subscriber of a group. Here a
text frame is built once per (message, operation id) and written straight to the
connection's transport, synchronously, from the group's fan-out loop.

This is only done when it is provably equivalent: the connection runs on uvicorn's
``websockets-sansio`` protocol (``edumatrix serve`` selects it), no extension
(permessage-deflate) was negotiated, the WebSocket is open and no close frame was
sent, and the transport is not paused for back-pressure. Otherwise the caller
falls back to the ASGI ``send`` path, which every other server keeps using.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

SEND_KEY = "edumatrix.server_send"


class KeepServerSend:
    """ASGI middleware: keep the server's own ``send`` in WebSocket scopes.

    Starlette wraps ``send`` for its exception handling; the original callable is
    what tells :meth:`RawSocket.of` which protocol object owns the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SEND_KEY] = send
        await self.app(scope, receive, send)


class RawSocket:
    """The transport under one WebSocket, with uvicorn's own liveness and flow control."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, websocket: WebSocket) -> RawSocket | None:
        protocol = getattr(websocket.scope.get(SEND_KEY), "__self__", None)
        if not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        if protocol.conn.extensions:  # frames would have to be compressed
            return None
        return cls(protocol)

    @property
    def open(self) -> bool:
        # Every way uvicorn leaves the OPEN state (our close, the peer's close frame,
        # a protocol error, a lost connection) sets close_sent or closes the
        # transport, so these two reads stand for the websockets state machine's
        # state, which is a property call: this runs once per frame.
        p = self._protocol
        return not p.close_sent and not p.transport.is_closing()

    def writable(self) -> bool:
        """True when a write now would neither be refused nor add to back-pressure."""
        p = self._protocol
        return bool(p.writable.is_set()) and not p.close_sent and not p.transport.is_closing()

    def write(self, frame: bytes) -> None:
        self._protocol.transport.write(frame)

    async def wait_writable(self) -> None:
        # connection_lost sets it too, so this never outlives the connection.
        await self._protocol.writable.wait()
