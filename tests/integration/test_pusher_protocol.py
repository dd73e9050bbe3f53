"""The Pusher protocol (version 7) spoken by hand over a raw WebSocket: resuming with
``since``, ``cache-`` channels, the shutdown drain, and protocol errors, exactly as
the server sends them."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from tests import pusher_clients
from tests.integration.test_embedded_ws import publish
from tests.pusher_clients import KEY, NORTHWOOD_APP, RawPusher, library, raw_pusher
from tests.server import ServerProcess

pusher_server = pusher_clients.pusher_server  # the module's server (a fixture)
Make = Callable[..., ServerProcess]


async def announcements(client: RawPusher, channel: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` positioned announcement events on ``channel``."""
    got = []
    while len(got) < count:
        message = await client.expect("announcement", channel)
        got.append(message["data"])
    return got


async def test_positions_then_resume_with_since(pusher_server: ServerProcess) -> None:
    grammar = "institution:northwood:role:teacher"
    channel = "private-institution.northwood.role.teacher"
    async with raw_pusher(pusher_server) as ada:
        await ada.subscribed(channel, "nw-ada", positions=True)
        first = [await publish(pusher_server, "nw-admin", grammar, f"t{i}") for i in range(2)]
        seen = await announcements(ada, channel, 2)
    assert [s["data"]["announcement"]["id"] for s in seen] == [f["id"] for f in first]
    assert seen[1]["offset"] == seen[0]["offset"] + 1
    last = {"offset": seen[1]["offset"], "epoch": seen[1]["epoch"]}
    missed = [await publish(pusher_server, "nw-admin", grammar, f"m{i}") for i in range(3)]
    async with raw_pusher(pusher_server) as again:
        await again.subscribed(channel, "nw-ada", since=last)
        replayed = await announcements(again, channel, 3)
        live = await publish(pusher_server, "nw-admin", grammar, "live")
        after = await announcements(again, channel, 1)
    assert [r["data"]["announcement"]["id"] for r in replayed] == [m["id"] for m in missed]
    assert [r["offset"] for r in replayed] == [last["offset"] + i for i in (1, 2, 3)]
    assert after[0]["data"]["announcement"]["id"] == live["id"]
    assert after[0]["offset"] == last["offset"] + 4


async def test_since_from_the_current_position_replays_nothing(
    pusher_server: ServerProcess,
) -> None:
    channel = "private-institution.northwood.department.nw-science"
    api = library(pusher_server)
    async with raw_pusher(pusher_server) as bo:
        await bo.subscribed(channel, "nw-bo", positions=True)
        await asyncio.to_thread(api.trigger, channel, "mark", {"n": 1})
        mark = (await bo.expect("mark", channel))["data"]
    async with raw_pusher(pusher_server) as again:
        since = {"offset": mark["offset"], "epoch": mark["epoch"]}
        await again.subscribed(channel, "nw-bo", since=since)
        await asyncio.to_thread(api.trigger, channel, "mark", {"n": 2})
        got = await again.expect("mark", channel)
    assert got["data"] == {"data": {"n": 2}, "offset": mark["offset"] + 1, "epoch": mark["epoch"]}


async def test_bad_since_is_a_subscription_error(pusher_server: ServerProcess) -> None:
    channel = "private-institution.northwood.department.nw-math"
    async with raw_pusher(pusher_server) as ada:
        await ada.subscribe(channel, "nw-ada", since={"offset": "1"})
        error = await ada.expect("pusher:subscription_error", channel)
    assert error["data"]["status"] == 400


async def test_cache_channel_miss_then_last_message(pusher_server: ServerProcess) -> None:
    cache = "private-cache-user.nw-ada"
    async with raw_pusher(pusher_server) as ada:
        await ada.subscribe(cache, "nw-ada")
        succeeded = await ada.expect("pusher_internal:subscription_succeeded", cache)
        assert succeeded["channel"] == cache
        assert (await ada.recv())["event"] == "pusher:cache_miss"
    api = library(pusher_server)
    for n in (1, 2):
        await asyncio.to_thread(api.trigger, "private-user.nw-ada", "status", {"n": n})
    async with raw_pusher(pusher_server) as ada:
        await ada.subscribed(cache, "nw-ada")
        cached = await ada.recv()
        assert cached == {"event": "status", "channel": cache, "data": {"n": 2}}
        await asyncio.to_thread(api.trigger, "private-user.nw-ada", "status", {"n": 3})
        live = await ada.recv()  # the cached one is not sent twice
    assert live["data"] == {"n": 3}


async def test_client_event_frame_carries_the_user_id(pusher_server: ServerProcess) -> None:
    channel = "presence-institution.northwood.alerts"
    async with raw_pusher(pusher_server) as admin, raw_pusher(pusher_server) as ada:
        await admin.subscribed(channel, "nw-admin")
        await ada.subscribed(channel, "nw-ada")
        await ada.send("client-typing", {"typing": True}, channel)
        got = await admin.expect("client-typing", channel)
    assert got == {
        "event": "client-typing",
        "channel": channel,
        "data": {"typing": True},
        "user_id": "nw-ada",
    }


async def test_client_event_on_unsubscribed_channel_is_an_error(
    pusher_server: ServerProcess,
) -> None:
    async with raw_pusher(pusher_server) as ada:
        await ada.send("client-typing", {}, "private-institution.northwood")
        error = await ada.expect("pusher:error")
        await ada.send("pusher:ping", {})
        assert (await ada.recv())["event"] == "pusher:pong"
    assert "not subscribed" in error["data"]["message"]


async def test_server_to_user_channel_is_the_signed_in_users_own(
    pusher_server: ServerProcess,
) -> None:
    mine, theirs = "#server-to-user-nw-cy", "#server-to-user-nw-dee"
    async with raw_pusher(pusher_server) as cy:
        await cy.send("pusher:subscribe", {"channel": mine})
        before = await cy.expect("pusher:subscription_error", mine)
        assert before["data"]["status"] == 403  # not signed in yet
        await cy.signin("nw-cy")
        await cy.subscribed(mine)
        await cy.send("pusher:subscribe", {"channel": theirs})
        other = await cy.expect("pusher:subscription_error", theirs)
        assert other["data"]["status"] == 403
        api = library(pusher_server)
        await asyncio.to_thread(api.trigger, "private-user.nw-cy", "note", {"to": "cy"})
        got = await cy.expect("note", mine)
    assert got["data"] == {"to": "cy"}


# -- protocol errors ------------------------------------------------------------------


async def refused(server: ServerProcess, path: str) -> tuple[list[dict[str, Any]], int | None]:
    async with websockets.connect(f"ws://127.0.0.1:{server.port}{path}") as ws:
        client = RawPusher(ws, server, KEY)
        return await client.closed()


async def test_unknown_app_key(pusher_server: ServerProcess) -> None:
    messages, code = await refused(pusher_server, "/app/nosuchkey1?protocol=7")
    assert [m["event"] for m in messages] == ["pusher:error"]
    assert messages[0]["data"]["code"] == 4001
    assert code == 4001


async def test_missing_and_unsupported_protocol(pusher_server: ServerProcess) -> None:
    messages, code = await refused(pusher_server, f"/app/{KEY}")
    assert messages[0]["data"]["code"] == 4008 and code == 4008
    messages, code = await refused(pusher_server, f"/app/{KEY}?protocol=99")
    assert messages[0]["data"]["code"] == 4007 and code == 4007


async def test_bad_messages_leave_the_connection_usable(pusher_server: ServerProcess) -> None:
    async with raw_pusher(pusher_server) as client:
        for bad in ("{not json", "[1, 2]", json.dumps({"event": 5})):
            await client.ws.send(bad)
            error = await client.recv()
            assert error["event"] == "pusher:error", error
        await client.send("pusher:nonsense", {})
        assert (await client.recv())["event"] == "pusher:error"
        await client.send("pusher:subscribe", {"channel": "private-no:colons"})
        assert (await client.recv())["event"] == "pusher:subscription_error"
        await client.send("pusher:ping", {})
        assert (await client.recv()) == {"event": "pusher:pong", "data": {}}
        # Still able to subscribe after all that.
        await client.subscribed("private-institution.northwood", "nw-cy")


async def test_forged_or_foreign_signature_is_refused(pusher_server: ServerProcess) -> None:
    channel = "private-institution.northwood.classroom.nw-math-101"
    async with raw_pusher(pusher_server) as one, raw_pusher(pusher_server) as two:
        signed = (await one.auth("nw-cy", channel)).json()
        # Another socket's signature does not open the channel on this one.
        await two.send("pusher:subscribe", {"channel": channel, **signed})
        error = await two.expect("pusher:subscription_error", channel)
        assert error["data"]["status"] == 401
        # A signature for one channel does not open another.
        other = "private-institution.northwood.classroom.nw-sci-201"
        await one.send("pusher:subscribe", {"channel": other, **signed})
        error = await one.expect("pusher:subscription_error", other)
        assert error["data"]["status"] == 401


# -- shutdown -------------------------------------------------------------------------


async def test_shutdown_says_reconnect_now(make_server: Make) -> None:
    server = make_server(pusher_apps=NORTHWOOD_APP)
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    channel = "private-institution.northwood"
    async with raw_pusher(server) as cy:
        await cy.subscribed(channel, "nw-cy")
        stopping = asyncio.create_task(asyncio.to_thread(server.stop, signal.SIGTERM))
        messages, code = await cy.closed()
        await stopping
    assert [m["event"] for m in messages] == ["pusher:error"], (messages, code, server.log())
    assert messages[0]["data"]["code"] == 4200
    assert code == 4200, (code, server.log())


@pytest.mark.parametrize("version", ["5", "6", "7"])
async def test_protocol_versions_five_to_seven(pusher_server: ServerProcess, version: str) -> None:
    async with raw_pusher(pusher_server, query=f"?protocol={version}") as client:
        assert client.socket_id
