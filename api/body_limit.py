"""Refuse HTTP request bodies over ``EDUMATRIX_MAX_BODY_BYTES`` without buffering them.

Why: the server read whatever body it was sent before looking at it; eight
concurrent 50 MB bodies took the process from 174 MB to 706 MB, and each was
answered 200. GraphQL requests are a few kilobytes.

- A ``Content-Length`` over the limit is answered 413 before the app runs and
  before any of the body is read.
- A body of unknown length (chunked) is counted as ``receive`` hands it over; the
  message that crosses the limit raises inside the app (both HTTP paths, Strawberry's
  and ``api/http_fast.py``, read the body through ``receive``) and this middleware
  answers 413, unless the app had already started its response.
- With a ``Content-Length`` within the limit the server's parser never delivers
  more than that, so ``receive`` is not wrapped at all.

uvicorn closes the connection after the 413 when the body was not read to its end.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.encoding import COMPACT_JSON

CODE = "PAYLOAD_TOO_LARGE"


class BodyTooLarge(Exception):
    """Raised by the wrapped ``receive`` when the body crosses the limit."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server's parser refuses it; count what arrives
    return None


class BodyLimit:
    """ASGI middleware in front of everything: at most ``max_bytes`` of request body."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused
        self._body = COMPACT_JSON.encode(
            {
                "errors": [
                    {
                        "message": f"request body over {max_bytes} bytes",
                        "extensions": {"code": CODE},
                    }
                ]
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        if length is not None:
            await self._refuse(send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:  # too late for a status; the server drops the connection
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        self.on_refused()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._body})
