"""The official Pusher server library (``pusher`` on PyPI) against our HTTP API:
triggers reach GraphQL and Pusher subscribers with offsets, signatures agree both
ways, and an app is held to its institution by the ACL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import httpx
import pusher.errors
import pytest

from api.pusher_apps import sign
from tests import pusher_clients
from tests.gqlws import TRANSPORT_WS, GraphQLWS, connect
from tests.pusher_clients import APP_ID, KEY, SECRET, library, pusher_js, raw_pusher
from tests.server import ServerProcess, token

pusher_server = pusher_clients.pusher_server  # the module's server (a fixture)

CHANNEL = """
subscription($name: String!) {
  channel(name: $name) { offset epoch channel kind type data }
}"""


async def subscribe_graphql(client: GraphQLWS, user: str, channel: str) -> None:
    assert (await client.init(token(user)))["type"] == "connection_ack"
    await client.subscribe(CHANNEL, {"name": channel})


async def next_event(client: GraphQLWS) -> dict[str, Any]:
    """The next event but the readiness probes (a late one may still come)."""
    while True:
        event: dict[str, Any] = (await client.next_data())["channel"]
        if event["kind"] != "probe":
            return event


async def subscribed_and_ready(client: GraphQLWS, server: ServerProcess, channel: str) -> None:
    """Wait until the subscription is live: a probe published after it arrives."""
    api = library(server)
    pusher_name = "private-" + channel.replace(":", ".")
    for _ in range(50):
        await asyncio.to_thread(api.trigger, pusher_name, "probe", {})
        try:
            event = await next_event_within(client, 0.2)
        except TimeoutError:
            continue
        assert event["kind"] == "probe"
        return
    raise AssertionError("the GraphQL subscription never went live")


async def next_event_within(client: GraphQLWS, wait: float) -> dict[str, Any]:
    async with asyncio.timeout(wait):
        event: dict[str, Any] = (await client.next_data(wait + 1))["channel"]
        return event


async def test_trigger_reaches_a_graphql_subscriber_with_an_offset(
    pusher_server: ServerProcess,
) -> None:
    channel = "institution:northwood"
    async with connect(pusher_server.ws_url, TRANSPORT_WS) as client:
        await subscribe_graphql(client, "nw-cy", channel)
        await subscribed_and_ready(client, pusher_server, channel)
        api = library(pusher_server)
        result = await asyncio.to_thread(
            api.trigger, "private-institution.northwood", "timetable-changed", {"room": "B2"}
        )
        assert result == {}
        got = await next_event(client)
    assert got["kind"] == "timetable-changed"
    assert got["type"] == "OTHER"
    assert got["channel"] == channel
    assert isinstance(got["offset"], int) and got["offset"] > 0
    assert got["data"]["source"] == "pusher"
    assert json.loads(got["data"]["pusherData"]) == {"room": "B2"}


async def test_trigger_string_data_is_kept_as_given(pusher_server: ServerProcess) -> None:
    channel = "private-institution.northwood.classroom.nw-sci-201"
    async with raw_pusher(pusher_server) as dee:
        await dee.subscribed(channel, "nw-dee")
        await asyncio.to_thread(library(pusher_server).trigger, channel, "note", "plain text")
        got = await dee.expect("note", channel)
    assert got["data"] == "plain text"


async def test_socket_id_excludes_that_socket_only(pusher_server: ServerProcess) -> None:
    channel = "private-institution.northwood.classroom.nw-math-102"
    api = library(pusher_server)
    async with (
        pusher_js(pusher_server, "nw-ada", bind=("grade",)) as sender,
        pusher_js(pusher_server, "nw-admin", bind=("grade",)) as other,
    ):
        await asyncio.to_thread(sender.subscribed, channel)
        await asyncio.to_thread(other.subscribed, channel)
        await asyncio.to_thread(api.trigger, channel, "grade", {"n": 1}, socket_id=sender.socket_id)
        await asyncio.to_thread(api.trigger, channel, "grade", {"n": 2})
        assert (await other.aevent(channel, "grade"))["data"] == {"n": 1}
        assert (await other.aevent(channel, "grade"))["data"] == {"n": 2}
        assert (await sender.aevent(channel, "grade"))["data"] == {"n": 2}
    # Events on one channel arrive in order: n=1 would have come before n=2.
    assert [line["data"] for line in sender.seen if line.get("event") == "grade"] == [{"n": 2}]


async def test_trigger_to_several_channels_and_batch(pusher_server: ServerProcess) -> None:
    math = "private-institution.northwood.department.nw-math"
    science = "private-institution.northwood.department.nw-science"
    api = library(pusher_server)
    async with raw_pusher(pusher_server) as admin:
        await admin.subscribed(math, "nw-admin", positions=True)
        await admin.subscribed(science, "nw-admin", positions=True)
        await asyncio.to_thread(api.trigger, [math, science], "both", {"k": 0})
        await asyncio.to_thread(
            api.trigger_batch,
            [
                {"channel": math, "name": "first", "data": {"k": 1}},
                {"channel": science, "name": "second", "data": "two"},
                {"channel": math, "name": "third", "data": {"k": 3}},
            ],
        )
        got = [await admin.recv() for _ in range(5)]
    by_channel: dict[str, list[tuple[str, Any, int]]] = {math: [], science: []}
    for message in got:
        body = message["data"]
        by_channel[message["channel"]].append((message["event"], body["data"], body["offset"]))
    assert [(e, d) for e, d, _ in by_channel[math]] == [
        ("both", {"k": 0}),
        ("first", {"k": 1}),
        ("third", {"k": 3}),
    ]
    assert [(e, d) for e, d, _ in by_channel[science]] == [("both", {"k": 0}), ("second", "two")]
    for events in by_channel.values():
        offsets = [o for _, _, o in events]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


async def test_bad_secret_is_refused(pusher_server: ServerProcess) -> None:
    api = library(pusher_server, secret="0" * 16 + "abcdefghijklmnop")
    with pytest.raises(pusher.errors.PusherBadAuth):
        await asyncio.to_thread(api.trigger, "private-institution.northwood", "x", {})
    with pytest.raises(pusher.errors.PusherBadAuth):
        await asyncio.to_thread(api.users_info, "presence-institution.northwood")


@pytest.mark.parametrize(
    "channel",
    [
        "private-institution.riverside",
        "private-institution.riverside.classroom.rv-cs-110",
        "private-user.rv-finn",
        "private-system.status",
    ],
)
async def test_an_app_may_not_trigger_outside_its_institution(
    pusher_server: ServerProcess, channel: str
) -> None:
    api = library(pusher_server)
    with pytest.raises(pusher.errors.PusherForbidden):
        await asyncio.to_thread(api.trigger, channel, "x", {})
    # Nothing was published where it was allowed either: all channels or none.
    with pytest.raises(pusher.errors.PusherForbidden):
        await asyncio.to_thread(api.trigger, ["private-institution.northwood", channel], "x", {})


async def test_channel_and_users_info_of_a_presence_channel(pusher_server: ServerProcess) -> None:
    channel = "presence-institution.northwood.classroom.nw-sci-201"
    api = library(pusher_server)
    empty = await asyncio.to_thread(api.channel_info, channel, ["user_count"])
    assert empty == {"occupied": False, "user_count": 0}
    async with raw_pusher(pusher_server) as bo, raw_pusher(pusher_server) as dee:
        await bo.subscribed(channel, "nw-bo")
        await dee.subscribed(channel, "nw-dee")
        info = await asyncio.to_thread(api.channel_info, channel, ["user_count"])
        users = await asyncio.to_thread(api.users_info, channel)
        bare = await asyncio.to_thread(api.channel_info, channel)
    assert info == {"occupied": True, "user_count": 2}
    assert bare == {"occupied": True}
    assert sorted(u["id"] for u in users["users"]) == ["nw-bo", "nw-dee"]


def signed_get(server: ServerProcess, path: str, params: dict[str, str]) -> httpx.Response:
    """A GET signed as Pusher's HTTP API reference says, by hand (not the library)."""
    query = {
        **params,
        "auth_key": KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
    }
    ordered = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    query["auth_signature"] = sign(SECRET, f"GET\n{path}\n{ordered}")
    return httpx.get(f"{server.url}{path}", params=query, timeout=10)


def test_get_signatures_with_query_params_agree(pusher_server: ServerProcess) -> None:
    path = f"/apps/{APP_ID}/channels/presence-institution.northwood.department.nw-science"
    ok = signed_get(pusher_server, path, {"info": "user_count"})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"occupied": False, "user_count": 0}
    # The library's own GET with query parameters (channel_info with attributes).
    api = library(pusher_server)
    channel = "presence-institution.northwood.department.nw-science"
    assert api.channel_info(channel, ["user_count"]) == {"occupied": False, "user_count": 0}
    # A parameter changed after signing is refused.
    query = dict(httpx.URL(str(ok.request.url)).params)
    query["info"] = "subscription_count"
    tampered = httpx.get(f"{pusher_server.url}{path}", params=query, timeout=10)
    assert tampered.status_code == 401
    # So is a stale timestamp, correctly signed.
    stale = {"info": "user_count", "auth_key": KEY, "auth_version": "1.0"}
    stale["auth_timestamp"] = str(int(time.time()) - 3600)
    ordered = "&".join(f"{k}={v}" for k, v in sorted(stale.items()))
    stale["auth_signature"] = sign(SECRET, f"GET\n{path}\n{ordered}")
    old = httpx.get(f"{pusher_server.url}{path}", params=stale, timeout=10)
    assert old.status_code == 401 and "auth_timestamp" in old.text


def test_post_body_must_match_body_md5(pusher_server: ServerProcess) -> None:
    path = f"/apps/{APP_ID}/events"
    body = json.dumps({"name": "x", "channels": ["private-institution.northwood"], "data": "{}"})
    query = {
        "auth_key": KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body.encode()).hexdigest(),
    }
    ordered = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    query["auth_signature"] = sign(SECRET, f"POST\n{path}\n{ordered}")
    headers = {"Content-Type": "application/json"}
    url = f"{pusher_server.url}{path}"
    ok = httpx.post(url, params=query, content=body, headers=headers, timeout=10)
    assert ok.status_code == 200, ok.text
    other = body.replace('"x"', '"y"')
    refused = httpx.post(url, params=query, content=other, headers=headers, timeout=10)
    assert refused.status_code == 401 and "body_md5" in refused.text
