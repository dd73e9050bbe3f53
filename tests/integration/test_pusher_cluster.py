"""The Pusher protocol across server processes sharing Redis and Postgres: presence
members, client events, HTTP API reads and GraphQL messages cross processes
(pusher-js in Node on each side)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.integration.test_embedded_ws import publish
from tests.pusher_clients import NORTHWOOD_APP, library, pusher_js
from tests.server import ServerProcess

Make = Callable[..., ServerProcess]

MATH_101 = "institution:northwood:classroom:nw-math-101"
PRESENCE_101 = "presence-institution.northwood.classroom.nw-math-101"


@pytest.fixture
def cluster(
    make_server: Make, pg_url: str, redis_url: str, redis_prefix: str
) -> list[ServerProcess]:
    settings = {
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "pusher_apps": NORTHWOOD_APP,
    }
    first = make_server(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make_server(**settings).start()]


async def test_presence_and_messages_cross_processes(cluster: list[ServerProcess]) -> None:
    a, b = cluster
    async with pusher_js(a, "nw-cy") as cy, pusher_js(b, "nw-ada") as ada:
        await asyncio.to_thread(cy.subscribed, PRESENCE_101)
        second = await asyncio.to_thread(ada.subscribed, PRESENCE_101)
        assert set(second["data"]["members"]) == {"nw-cy", "nw-ada"}
        added = await cy.aevent(PRESENCE_101, "pusher:member_added")
        assert added["data"]["id"] == "nw-ada"
        # A client event from process b reaches the member on process a ...
        ada.send(op="trigger", channel=PRESENCE_101, event="client-typing", data={"x": 1})
        typed = await cy.aevent(PRESENCE_101, "client-typing")
        assert typed["user_id"] == "nw-ada"
        # ... and the HTTP API of either process sees both members.
        users = await asyncio.to_thread(library(a).users_info, PRESENCE_101)
        assert sorted(u["id"] for u in users["users"]) == ["nw-ada", "nw-cy"]
        # A GraphQL mutation on process a reaches the presence channel's subscriber on b.
        sent = await publish(a, "nw-ada", MATH_101, "cluster")
        got = await ada.aevent(PRESENCE_101, "announcement")
        assert got["data"]["announcement"]["id"] == sent["id"]
