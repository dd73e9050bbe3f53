"""Presence over real WebSockets: embedded mode, and two cluster processes sharing Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.gqlws import LEGACY_WS
from tests.presence_client import codes, next_event, present, until_members
from tests.server import ServerProcess

Make = Callable[..., ServerProcess]
MATH = "institution:northwood:department:nw-math"
NORTHWOOD = "institution:northwood"
TIMEOUT = 2.0  # EDUMATRIX_PRESENCE_TIMEOUT_SECONDS in the cluster test
SET_STATUS = """
mutation($status: PresenceStatus!, $message: String) {
  setStatus(status: $status, message: $message) { status message channels }
}"""
ONLINE = "query($i: ID!) { onlineCount(institutionId: $i) }"


async def test_embedded_tabs_are_one_member_and_status_reaches_watchers(
    embedded_server: ServerProcess,
) -> None:
    server = embedded_server
    async with present(server, "nw-ada", MATH) as (teacher, snap):
        assert [m["userId"] for m in snap["members"]] == ["nw-ada"]
        async with present(server, "nw-cy", MATH, LEGACY_WS) as (tab1, snap1):
            joined = await next_event(teacher)
            assert joined["type"] == "JOIN" and joined["member"]["userId"] == "nw-cy"
            assert joined["member"]["displayName"] == "Cy Student"
            assert joined["memberCount"] == 2 and snap1["memberCount"] == 2
            async with present(server, "nw-cy", MATH) as (_tab2, snap2):
                assert snap2["memberCount"] == 2 and snap2["connectionCount"] == 3
                await until_members(server, "nw-admin", MATH, {"nw-ada": 1, "nw-cy": 2})
            # The second tab closed: no LEAVE; the next event is the status change.
            await until_members(server, "nw-admin", MATH, {"nw-ada": 1, "nw-cy": 1})
            result = await asyncio.to_thread(
                server.graphql, SET_STATUS, {"status": "BUSY", "message": "exam"}, as_user="nw-cy"
            )
            assert result["data"] == {
                "setStatus": {"status": "BUSY", "message": "exam", "channels": 1}
            }
            status = await next_event(teacher)
            assert status["type"] == "STATUS"
            assert status["member"]["status"] == "BUSY" and status["member"]["message"] == "exam"
            assert (await next_event(tab1))["type"] == "STATUS"  # own changes too
            online = await asyncio.to_thread(
                server.graphql, ONLINE, {"i": "northwood"}, as_user="nw-admin"
            )
            assert online["data"] == {"onlineCount": 2}
        left = await next_event(teacher)
        assert left["type"] == "LEAVE" and left["member"]["userId"] == "nw-cy"
        assert left["member"]["connections"] == 0 and left["memberCount"] == 1
    await until_members(server, "nw-admin", MATH, {})


async def test_presence_acl(embedded_server: ServerProcess) -> None:
    server = embedded_server
    query = "query($c: String!) { presence(channel: $c) { memberCount } }"
    for user, channel in [
        ("nw-cy", "institution:northwood:classroom:nw-sci-201"),  # not her classroom
        ("nw-cy", "institution:riverside"),  # another institution
        ("nw-cy", "institution:northwood:role:teacher"),
    ]:
        result = await asyncio.to_thread(server.graphql, query, {"c": channel}, as_user=user)
        assert codes(result) == ["FORBIDDEN"], (user, channel, result)
    bad = await asyncio.to_thread(server.graphql, query, {"c": "nope"}, as_user="nw-cy")
    assert codes(bad) == ["BAD_CHANNEL"]
    other = await asyncio.to_thread(server.graphql, ONLINE, {"i": "riverside"}, as_user="nw-admin")
    assert codes(other) == ["NOT_FOUND"]
    anonymous = await asyncio.to_thread(server.graphql, ONLINE, {"i": "northwood"})
    assert codes(anonymous) == ["UNAUTHENTICATED"]
    long = await asyncio.to_thread(
        server.graphql, SET_STATUS, {"status": "AWAY", "message": "x" * 201}, as_user="nw-cy"
    )
    assert codes(long) == ["BAD_INPUT"]
    with pytest.raises(AssertionError, match="FORBIDDEN"):
        async with present(server, "nw-dee", "institution:northwood:classroom:nw-math-101"):
            pass


@pytest.fixture
def cluster(
    make_server: Make, pg_url: str, state_bus_url: str, redis_prefix: str
) -> list[ServerProcess]:
    settings = {
        "database_url": pg_url,
        "redis_url": state_bus_url,
        "redis_prefix": redis_prefix,
        "presence_timeout_seconds": str(TIMEOUT),
    }
    first = make_server(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make_server(**settings).start()]


async def test_cluster_presence_across_processes_and_after_kill(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    async with present(b, "nw-admin", NORTHWOOD) as (watcher, snap):
        assert snap["memberCount"] == 1
        async with present(a, "nw-cy", NORTHWOOD) as (tab1, _):
            joined = await next_event(watcher)
            assert (joined["type"], joined["member"]["userId"]) == ("JOIN", "nw-cy")
            async with present(a, "nw-cy", NORTHWOOD) as (_tab2, snap2):
                assert snap2["memberCount"] == 2 and snap2["connectionCount"] == 3
            await until_members(b, "nw-admin", NORTHWOOD, {"nw-admin": 1, "nw-cy": 1})
            # Closing a tab emitted nothing: the next event on B is Dee's JOIN.
            async with present(b, "nw-dee", NORTHWOOD):
                nxt = await next_event(watcher)
                assert (nxt["type"], nxt["member"]["userId"]) == ("JOIN", "nw-dee")
            assert (await next_event(watcher))["type"] == "LEAVE"  # Dee closed normally
            a.kill()  # SIGKILL: no cleanup runs on A
            # Within the configured bound (timeout + janitor period) plus delivery margin.
            left = await next_event(watcher, wait=TIMEOUT * 1.25 + 3)
            assert (left["type"], left["member"]["userId"]) == ("LEAVE", "nw-cy")
            assert left["memberCount"] == 1
            del tab1
        await until_members(b, "nw-admin", NORTHWOOD, {"nw-admin": 1})
