"""RedisPresence against a real Redis: two instances stand for two server processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streams.presence import EventType, Member, PresenceEvent, Resync, Status
from streams.presence_redis import RedisPresence

CHANNEL = "institution:northwood"


@pytest.fixture
async def pair(redis_url: str, redis_prefix: str) -> AsyncIterator[list[RedisPresence]]:
    # The living nodes' connections expire after 5 s, the dying node's after 1 s:
    # with 1 s here too, one heartbeat late by a second on a loaded machine expired a
    # living member and the "leave once" test saw a second LEAVE (seen once in CI).
    nodes = [
        RedisPresence(redis_url, prefix=redis_prefix, timeout_seconds=5.0, queue_size=100)
        for _ in range(2)
    ]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        await node.close()


def cy() -> Member:
    return Member(user_id="nw-cy", display_name="Cy Student", role="student")


async def next_change(items: AsyncIterator[PresenceEvent | Resync]) -> PresenceEvent:
    async with asyncio.timeout(5):
        item = await anext(items)
    assert isinstance(item, PresenceEvent), item
    return item


async def test_status_applies_everywhere_and_to_later_joins(pair: list[RedisPresence]) -> None:
    a, b = pair
    async with b.attend(CHANNEL, "northwood", cy()) as first:
        other = "institution:northwood:role:student"
        async with a.attend(other, "northwood", cy()) as second:
            assert await a.set_status("nw-cy", Status.AWAY, "lunch") == 2
            for events in (first.events, second.events):
                change = await next_change(events)
                assert change.type is EventType.STATUS and change.member.message == "lunch"
        snapshot = await a.snapshot(CHANNEL)
        assert [(m.status, m.connections) for m in snapshot.members] == [(Status.AWAY, 1)]
        assert await a.online("northwood", ["nw-cy", "nw-dee"]) == {"nw-cy"}
        assert await b.online_count("northwood") == 1 and await b.online_count("riverside") == 0
    assert await a.online_count("northwood") == 0


async def test_dead_process_members_leave_once_whoever_runs_the_janitor(
    redis_url: str, redis_prefix: str, pair: list[RedisPresence]
) -> None:
    a, b = pair
    dying = RedisPresence(redis_url, prefix=redis_prefix, timeout_seconds=1.0, queue_size=100)
    await dying.start()
    try:
        watch = b.attend(CHANNEL, "northwood", Member("nw-admin", "Nora Admin", "admin"))
        async with watch as attendance:
            await dying.join(CHANNEL, "northwood", cy())
            await dying.join(CHANNEL, "northwood", cy())  # a second tab: no event
            joined = await next_change(attendance.events)
            assert joined.type is EventType.JOIN and joined.member.user_id == "nw-cy"
            # Simulate kill -9: stop its heartbeats without leaving.
            for task in dying._tasks:
                task.cancel()
            await asyncio.sleep(1.1)
            await asyncio.gather(a.expire(), b.expire(), a.expire())  # racing janitors
            left = await next_change(attendance.events)
            seen = (left.type, left.member.user_id, left.member_count)
            assert seen == (EventType.LEAVE, "nw-cy", 1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(attendance.events)  # no second LEAVE
            assert [m.user_id for m in (await a.snapshot(CHANNEL)).members] == ["nw-admin"]
    finally:
        dying._local.clear()  # already gone; closing must not touch Redis state
        await dying.close()  # also when an assertion failed: no sockets left behind


async def test_paused_process_rejoins_its_live_connections(pair: list[RedisPresence]) -> None:
    a, b = pair
    connection = await a.join(CHANNEL, "northwood", cy())
    await b._run("LEAVE", connection)  # as if the janitor expired it during a pause
    assert (await b.snapshot(CHANNEL)).members == []
    await a._heartbeat()
    assert [m.user_id for m in (await b.snapshot(CHANNEL)).members] == ["nw-cy"]
    await a.leave(connection)
