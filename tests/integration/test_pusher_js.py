"""pusher-js 8 (the official Pusher Channels client, in Node) against real servers:
channel authorization through the ACL, GraphQL messages arriving as Pusher events,
presence members shared with GraphQL presence, client events, several processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests import pusher_clients
from tests.integration.test_embedded_ws import publish
from tests.presence_client import members, present, until_members
from tests.pusher_clients import NORTHWOOD_APP, library, pusher_js
from tests.server import ServerProcess, token

pusher_server = pusher_clients.pusher_server  # the module's server (a fixture)

Make = Callable[..., ServerProcess]

MATH_101 = "institution:northwood:classroom:nw-math-101"
PRIVATE_MATH_101 = "private-institution.northwood.classroom.nw-math-101"


def is_error(line: dict[str, Any], channel: str) -> bool:
    return line.get("channel") == channel and line.get("event") == "pusher:subscription_error"


async def test_private_channel_gets_a_graphql_announcement(pusher_server: ServerProcess) -> None:
    async with pusher_js(pusher_server, "nw-cy") as cy:
        await asyncio.to_thread(cy.subscribed, PRIVATE_MATH_101)
        sent = await publish(pusher_server, "nw-ada", MATH_101, "Quiz Friday")
        got = await cy.aevent(PRIVATE_MATH_101, "announcement")
    announcement = got["data"]["announcement"]
    assert announcement["id"] == sent["id"]
    assert announcement["title"] == "Quiz Friday"
    assert announcement["channel"] == MATH_101
    assert got["user_id"] is None  # not a client event


@pytest.mark.parametrize(
    ("user", "channel"),
    [
        ("nw-cy", "private-institution.northwood.classroom.nw-sci-201"),  # another classroom
        ("nw-cy", "private-institution.northwood.department.nw-science"),  # another department
        ("nw-cy", "presence-institution.northwood.classroom.nw-sci-201"),
        ("nw-cy", "private-institution.northwood.role.teacher"),  # another role
        ("nw-cy", "private-user.nw-dee"),  # someone else's notifications
        ("nw-cy", "private-institution.riverside"),  # another institution
        ("rv-finn", "private-institution.northwood"),  # another institution's user
    ],
)
async def test_auth_endpoint_refuses_what_the_acl_refuses(
    pusher_server: ServerProcess, user: str, channel: str
) -> None:
    async with pusher_js(pusher_server, user) as client:
        client.subscribe(channel)
        error = await client.await_for(lambda line: is_error(line, channel))
        # What pusher-js reports for the auth endpoint's 403; nothing else arrives.
        assert error["data"]["status"] == 403, error
        async with httpx.AsyncClient(timeout=10) as http:
            direct = await http.post(
                f"{pusher_server.url}/pusher/auth",
                data={"socket_id": client.socket_id, "channel_name": channel},
                headers={"Authorization": f"Bearer {token(user)}"},
            )
    assert direct.status_code == 403, direct.text
    assert "auth" not in direct.text


async def test_auth_endpoint_needs_a_token(pusher_server: ServerProcess) -> None:
    async with pusher_js(pusher_server, None) as anonymous:
        anonymous.subscribe(PRIVATE_MATH_101)
        error = await anonymous.await_for(lambda line: is_error(line, PRIVATE_MATH_101))
    assert error["data"]["status"] == 401, error


async def test_public_name_needs_signin_then_the_acl(pusher_server: ServerProcess) -> None:
    public = "institution.northwood.classroom.nw-math-101"
    department = "institution.northwood.department.nw-math"
    other = "institution.northwood.classroom.nw-sci-201"
    async with pusher_js(pusher_server, "nw-cy") as cy:
        cy.subscribe(public)
        refused = await cy.await_for(lambda line: is_error(line, public))
        assert refused["data"]["status"] == 401, refused
        # (pusher-js keeps a channel the server refused "pending": a new name follows.)
        cy.send(op="signin")
        await cy.await_for(lambda line: line.get("global") == "pusher:signin_success")
        await asyncio.to_thread(cy.subscribed, department)
        cy.subscribe(other)
        denied = await cy.await_for(lambda line: is_error(line, other))
        assert denied["data"]["status"] == 403, denied
        sent = await publish(
            pusher_server, "nw-ada", "institution:northwood:department:nw-math", "p"
        )
        got = await cy.aevent(department, "announcement")
    assert got["data"]["announcement"]["id"] == sent["id"]


async def test_signin_keeps_the_connection_free_of_subscription_errors(
    pusher_server: ServerProcess,
) -> None:
    """pusher-js subscribes to ``#server-to-user-<id>`` as soon as it is signed in
    (Pusher's user channel, for ``send_to_user``); Pusher accepts that subscription
    for the signed-in user, so apps never see an error for it."""
    async with pusher_js(pusher_server, "nw-cy") as cy:
        cy.send(op="signin")
        await cy.await_for(lambda line: line.get("global") == "pusher:signin_success")
        await asyncio.to_thread(cy.subscribed, PRIVATE_MATH_101)  # a later, known reply
    errors = [line for line in cy.seen if line.get("global") == "pusher:subscription_error"]
    assert errors == [], errors


PRESENCE_101 = "presence-institution.northwood.classroom.nw-math-101"


async def test_presence_members_added_and_removed(pusher_server: ServerProcess) -> None:
    async with pusher_js(pusher_server, "nw-cy") as cy:
        first = await asyncio.to_thread(cy.subscribed, PRESENCE_101)
        assert first["data"]["me"]["id"] == "nw-cy"
        assert set(first["data"]["members"]) == {"nw-cy"}
        assert first["data"]["members"]["nw-cy"]["displayName"] == "Cy Student"
        async with pusher_js(pusher_server, "nw-ada") as ada:
            second = await asyncio.to_thread(ada.subscribed, PRESENCE_101)
            assert set(second["data"]["members"]) == {"nw-cy", "nw-ada"}
            assert second["data"]["count"] == 2
            added = await cy.aevent(PRESENCE_101, "pusher:member_added")
            assert added["data"]["id"] == "nw-ada"
            assert added["data"]["info"]["displayName"] == "Ada Lovelace"
            assert added["data"]["info"]["role"] == "teacher"
        # ada's process was killed: her socket closed without unsubscribing.
        removed = await cy.aevent(PRESENCE_101, "pusher:member_removed")
        assert removed["data"]["id"] == "nw-ada"
        cy.send(op="members", channel=PRESENCE_101)
        now = await cy.await_for(lambda line: "members" in line)
    assert set(now["members"]["members"]) == {"nw-cy"}


async def test_a_user_on_graphql_and_pusher_counts_once(pusher_server: ServerProcess) -> None:
    presence_102 = "presence-institution.northwood.classroom.nw-math-102"
    math_102 = "institution:northwood:classroom:nw-math-102"
    api = library(pusher_server)
    async with (
        present(pusher_server, "nw-ada", math_102) as (graphql_ada, snapshot),
        pusher_js(pusher_server, "nw-ada") as pusher_ada,
    ):
        assert [m["userId"] for m in snapshot["members"]] == ["nw-ada"]
        joined = await asyncio.to_thread(pusher_ada.subscribed, presence_102)
        assert set(joined["data"]["members"]) == {"nw-ada"}
        # Two connections of one user: one member, in GraphQL and in Pusher's API.
        await until_members(pusher_server, "nw-admin", math_102, {"nw-ada": 2})
        users = await asyncio.to_thread(api.users_info, presence_102)
        assert users == {"users": [{"id": "nw-ada"}]}
        info = await asyncio.to_thread(api.channel_info, presence_102, ["user_count"])
        assert info == {"occupied": True, "user_count": 1}
    assert await members(pusher_server, "nw-admin", math_102) == {}


async def test_client_events_reach_other_members_not_the_sender(
    pusher_server: ServerProcess,
) -> None:
    channel = "presence-institution.northwood.department.nw-math"
    async with pusher_js(pusher_server, "nw-cy") as cy, pusher_js(pusher_server, "nw-ada") as ada:
        await asyncio.to_thread(cy.subscribed, channel)
        await asyncio.to_thread(ada.subscribed, channel)
        cy.send(op="trigger", channel=channel, event="client-typing", data={"typing": True})
        assert (await cy.await_for(lambda line: "triggered" in line))["triggered"] is True
        got = await ada.aevent(channel, "client-typing")
        assert got["data"] == {"typing": True}
        assert got["user_id"] == "nw-cy"
        # ada answers; once cy has her event, cy's own would have arrived before it.
        ada.send(op="trigger", channel=channel, event="client-typing", data={"typing": False})
        back = await cy.aevent(channel, "client-typing")
        assert back["user_id"] == "nw-ada"
    mine = [line for line in cy.seen if line.get("event") == "client-typing"]
    assert [line["user_id"] for line in mine] == ["nw-ada"]


async def test_client_events_on_a_private_channel_need_signin(
    pusher_server: ServerProcess,
) -> None:
    channel = "private-institution.northwood.classroom.nw-math-102"
    async with (
        pusher_js(pusher_server, "nw-ada") as ada,
        pusher_js(pusher_server, "nw-admin") as admin,
    ):
        await asyncio.to_thread(ada.subscribed, channel)
        await asyncio.to_thread(admin.subscribed, channel)
        ada.send(op="trigger", channel=channel, event="client-typing", data={"n": 1})
        refused = await ada.await_for(lambda line: line.get("global") == "pusher:error")
        assert "known user" in refused["data"]["message"]
        ada.send(op="signin")
        await ada.await_for(lambda line: line.get("global") == "pusher:signin_success")
        ada.send(op="trigger", channel=channel, event="client-typing", data={"n": 2})
        got = await admin.aevent(channel, "client-typing")
    # (pusher-js hands a client event's user_id to callbacks on presence channels only.)
    assert got["data"] == {"n": 2}
    before = [line for line in admin.seen if line.get("event") == "client-typing"]
    assert len(before) == 1  # the refused one never went out


async def test_pusher_js_hears_reconnect_now_on_shutdown(make_server: Make) -> None:
    server = make_server(pusher_apps=NORTHWOOD_APP)
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with pusher_js(server, "nw-cy") as cy:
        await asyncio.to_thread(cy.subscribed, PRIVATE_MATH_101)
        await asyncio.to_thread(server.stop, signal.SIGTERM)
        told = await cy.await_for(
            lambda line: (
                isinstance(line.get("connection_error"), dict)
                and line["connection_error"].get("code") == 4200
            )
        )
        assert "reconnect" in told["connection_error"]["message"]
        # 4200-4299 means "reconnect now": pusher-js tries again at once.
        await cy.await_for(lambda line: line.get("state") in ("connecting", "unavailable"))
