"""api/wsprotocol.py: the lighter containers keep asyncio's semantics, and the
protocol still speaks WebSocket to a real client through a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import uvicorn
import websockets

from api.wsprotocol import Flag, Inbox, LeanWebSocketProtocol
from tests.services import free_port


async def test_inbox_is_fifo_and_get_waits_for_a_put() -> None:
    inbox = Inbox()
    assert inbox.empty() and inbox.qsize() == 0
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert inbox.qsize() == 2
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(getter, 1) == 3
    assert inbox.empty()


async def _cancel_while_waiting(waiting: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(waiting)
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_inbox_survives_a_cancelled_get() -> None:
    inbox = Inbox()
    await _cancel_while_waiting(inbox.get())
    inbox.put_nowait("kept")  # not consumed by the cancelled getter
    assert inbox.qsize() == 1
    assert await asyncio.wait_for(inbox.get(), 1) == "kept"


async def test_flag_releases_every_waiter_once_set() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    flag.clear()  # like asyncio.Event: already-released waiters still return True
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    assert not flag.is_set()
    flag.set()
    assert await asyncio.wait_for(flag.wait(), 1) is True


async def test_flag_forgets_a_cancelled_waiter() -> None:
    flag = Flag()
    await _cancel_while_waiting(flag.wait())
    assert not flag._waiters
    flag.set()
    assert flag.is_set()


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message["text"]})


@contextlib.asynccontextmanager
async def lean_server() -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        _echo, port=free_port(), ws=LeanWebSocketProtocol, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers only this flag
                await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_a_real_client_gets_every_message_back_in_order() -> None:
    async with lean_server() as server:
        url = f"ws://127.0.0.1:{server.config.port}/"
        async with websockets.connect(url) as ws:
            for i in range(200):  # sent ahead of reading: uvicorn pauses and resumes reading
                await ws.send(f"m{i}")
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(200)] == [
                f"m{i}" for i in range(200)
            ]
            (protocol,) = server.server_state.connections
            assert isinstance(protocol, LeanWebSocketProtocol)
            # The handshake's request and response are released once written.
            assert "request" not in vars(protocol) and "response" not in vars(protocol)
