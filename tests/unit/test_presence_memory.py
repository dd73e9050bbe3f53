"""MemoryPresence semantics and the Watch queue (embedded mode, no server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streams.presence import (
    EventType,
    Member,
    PresenceEvent,
    Resync,
    Status,
    Watch,
)
from streams.presence_memory import MemoryPresence

CHANNEL = "institution:northwood"


def member(user: str) -> Member:
    return Member(user_id=user, display_name=user.upper(), role="student")


async def take(items: AsyncIterator[PresenceEvent | Resync]) -> PresenceEvent | Resync:
    async with asyncio.timeout(1):
        return await anext(items)


async def test_tabs_are_one_member_and_leave_comes_with_the_last() -> None:
    presence = MemoryPresence(queue_size=10)
    async with presence.attend(CHANNEL, "northwood", member("a")) as watcher:
        assert [m.user_id for m in watcher.snapshot.members] == ["a"]
        one = await presence.join(CHANNEL, "northwood", member("b"))
        two = await presence.join(CHANNEL, "northwood", member("b"))
        joined = await take(watcher.events)
        assert isinstance(joined, PresenceEvent) and joined.type is EventType.JOIN
        snapshot = await presence.snapshot(CHANNEL)
        assert {m.user_id: m.connections for m in snapshot.members} == {"a": 1, "b": 2}
        assert snapshot.connection_count == 3
        await presence.leave(one)
        assert await presence.online("northwood", ["b"]) == {"b"}
        await presence.set_status("b", Status.BUSY, None)
        status = await take(watcher.events)  # no LEAVE came before it
        assert isinstance(status, PresenceEvent) and status.type is EventType.STATUS
        await presence.leave(two)
        left = await take(watcher.events)
        assert isinstance(left, PresenceEvent)
        assert (left.type, left.member.user_id, left.member_count) == (EventType.LEAVE, "b", 1)
        assert await presence.online_count("northwood") == 1
    assert await presence.online_count("northwood") == 0
    assert (await presence.snapshot(CHANNEL)).members == []


async def test_status_is_kept_for_later_joins() -> None:
    presence = MemoryPresence(queue_size=10)
    assert await presence.set_status("a", Status.AWAY, "back at 2") == 0
    async with presence.attend(CHANNEL, "northwood", member("a")) as watcher:
        (me,) = watcher.snapshot.members
        assert (me.status, me.message) == (Status.AWAY, "back at 2")


async def test_cancelled_attendance_still_leaves() -> None:
    presence = MemoryPresence(queue_size=10)
    entered = asyncio.Event()

    async def attend() -> None:
        async with presence.attend(CHANNEL, "northwood", member("a")):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(attend())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await presence.online_count("northwood") == 0


async def test_a_watch_that_overflows_asks_for_a_resync_and_skips_old_versions() -> None:
    watch = Watch(maxsize=2)
    watch.after(1)
    events = [PresenceEvent(CHANNEL, EventType.JOIN, member("x"), 1, v) for v in (1, 2, 3, 4)]
    for event in events[:2]:
        watch.offer(event)
    assert await take(watch) == events[1]  # version 1 was already in the snapshot
    for event in events[2:] + events[:1]:
        watch.offer(event)
    assert isinstance(await take(watch), Resync)
    watch.after(4)
    watch.offer(PresenceEvent(CHANNEL, EventType.LEAVE, member("x"), 0, 5))
    last = await take(watch)
    assert isinstance(last, PresenceEvent) and last.version == 5
