"""uvicorn's ``websockets-sansio`` protocol with less memory per idle connection.

Why: an idle subscription cost ~32 KB of Python objects (tracemalloc over 1,000
connections, bench/README.md), against ~15 KB for a bare ``websockets`` server.
Three pieces of that are per-connection state uvicorn allocates for cases a
subscription server rarely or never reaches again once the handshake is done:

- the receive queue, an ``asyncio.Queue`` (three deques, ~2.3 KB) for what is at
  most a couple of messages: uvicorn pauses reading after each message until the
  app has taken it. :class:`Inbox` is a list and, while the app waits, one future;
- the ``writable`` flag, an ``asyncio.Event`` (a deque, ~0.7 KB) that is waited on
  only under back-pressure. :class:`Flag` creates its waiter list on first wait;
- the parsed handshake request and the prepared response (their header objects,
  ~3.5 KB), which uvicorn (and, for the request, the websockets parser) keep after
  the response is written. The ASGI scope has its own copy of the request
  headers, which is what the app reads.

Behaviour is uvicorn's: same messages, same order, same back-pressure, same close
handling; only the containers change. ``edumatrix serve`` selects this class; with
another uvicorn protocol the server works the same with more memory per socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class Inbox:
    """A single-consumer FIFO with the subset of ``asyncio.Queue`` uvicorn uses."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class Flag:
    """``asyncio.Event`` semantics; the waiter list exists only while someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Written; uvicorn reads these only before the handshake completes. The
            # websockets parser's generator frame still holds the request, so its
            # headers are emptied in place (the scope has its own copy).
            request = self.__dict__.pop("request", None)
            if request is not None:
                request.headers.clear()
            self.__dict__.pop("response", None)
