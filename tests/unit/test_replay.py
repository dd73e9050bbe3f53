"""Unit tests for recovery (streams/history.recover) and the replay desk
(streams/replay.py) over a real memory channel log.

The desk's promises: every resume gets its replay or a ReplayUnavailable with a
retry hint (never a silent nothing), replays of one channel share one read, reads
are bounded in concurrency, and a history that fails for a moment is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from broadcaster import Broadcast
from prometheus_client import CollectorRegistry

from api.multiplex import Frames, Member
from streams.bus import Bus
from streams.envelope import Envelope, Position
from streams.history import MemoryChannelLog, Recovery, recover
from streams.hub import Reset
from streams.replay import RecoveryMetrics, ReplayDesk, ReplayUnavailable

CH = "institution:nw"


class CountingLog:
    """A memory log that counts reads, can hold them, and can fail the next few."""

    def __init__(self, inner: MemoryChannelLog) -> None:
        self.inner = inner
        self.reads = 0
        self.active = 0
        self.most_active = 0
        self.failures = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish(self, channel: str, kind: str, data: Mapping[str, Any]) -> Envelope:
        return await self.inner.publish(channel, kind, data)

    async def position(self, channel: str) -> Position:
        return await self.inner.position(channel)

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None:
        self.reads += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.gate.wait()
            if self.failures:
                self.failures -= 1
                raise ConnectionError("Redis is restarting")
            return await self.inner.read_since(channel, since)
        finally:
            self.active -= 1


def desk(
    log: CountingLog, *, concurrency: int = 4, queue: int = 1000, wait: float = 5.0
) -> tuple[ReplayDesk, RecoveryMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = RecoveryMetrics(registry)
    found = ReplayDesk(log, metrics, concurrency=concurrency, queue_size=queue, wait_seconds=wait)
    return found, metrics, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def published(log: MemoryChannelLog, n: int, channel: str = CH) -> list[Envelope]:
    return [await log.publish(channel, "msg", {"i": i}) for i in range(n)]


async def test_recover_covers_the_gap_without_a_reset(broadcast: Broadcast) -> None:
    log = MemoryChannelLog(broadcast, size=100, ttl_seconds=600)
    sent = await published(log, 5)
    found = await recover(log, CH, sent[1].position)
    assert found == Recovery(None, sent[2:])


async def test_recover_after_a_lost_history_resets_to_the_new_epochs_start(
    broadcast: Broadcast,
) -> None:
    log = MemoryChannelLog(broadcast, size=100, ttl_seconds=600)
    before = await published(log, 3)
    log._channels.clear()  # what a Redis restart without persistence does
    after = await published(log, 4)
    assert after[0].epoch != before[0].epoch
    found = await recover(log, CH, before[-1].position)
    assert found.reset == Position(0, after[0].epoch)
    assert [e.offset for e in found.envelopes] == [1, 2, 3, 4]
    assert found.cause == "epoch_changed"


async def test_recover_past_trimmed_history_resets_to_the_head(broadcast: Broadcast) -> None:
    log = MemoryChannelLog(broadcast, size=3, ttl_seconds=600)
    sent = await published(log, 10)
    found = await recover(log, CH, sent[0].position)
    assert found == Recovery(sent[-1].position, [], "history_trimmed")


async def test_a_herd_on_one_channel_shares_one_read(broadcast: Broadcast) -> None:
    log = CountingLog(MemoryChannelLog(broadcast, size=100, ttl_seconds=600))
    sent = await published(log.inner, 60)
    replays, _, registry = desk(log)
    log.gate.clear()  # the first read holds; everyone else queues behind it
    sinces = [sent[i % 40].position for i in range(300)]
    tasks = [asyncio.create_task(replays.recover(CH, s)) for s in sinces]
    await asyncio.sleep(0.05)
    log.gate.set()
    results = await asyncio.gather(*tasks)
    for since, found in zip(sinces, results, strict=True):
        assert found.reset is None
        assert [e.offset for e in found.envelopes] == list(range(since.offset + 1, 61))
    assert log.reads <= 2  # the one held, then one for everyone who waited
    assert value(registry, "edumatrix_replays_total", result="served") == 300
    assert value(registry, "edumatrix_replay_reads_total") == log.reads
    assert value(registry, "edumatrix_replays_queued") == 0


async def test_reads_of_many_channels_are_bounded(broadcast: Broadcast) -> None:
    log = CountingLog(MemoryChannelLog(broadcast, size=100, ttl_seconds=600))
    channels = [f"institution:nw:classroom:c{i}" for i in range(40)]
    starts = {c: (await published(log.inner, 5, c))[0].position for c in channels}
    replays, _, _ = desk(log, concurrency=3)
    log.gate.clear()
    tasks = [asyncio.create_task(replays.recover(c, starts[c])) for c in channels]
    await asyncio.sleep(0.05)
    assert log.active == 3
    log.gate.set()
    for found in await asyncio.gather(*tasks):
        assert [e.offset for e in found.envelopes] == [2, 3, 4, 5]
    assert log.most_active == 3


async def test_a_full_queue_refuses_with_a_retry_hint(broadcast: Broadcast) -> None:
    log = CountingLog(MemoryChannelLog(broadcast, size=100, ttl_seconds=600))
    channels = [f"institution:nw:classroom:c{i}" for i in range(4)]
    starts = [(await published(log.inner, 5, c))[0].position for c in channels]
    replays, _, registry = desk(log, concurrency=1, queue=2, wait=4.0)
    log.gate.clear()
    reading = asyncio.create_task(replays.recover(channels[0], starts[0]))
    await asyncio.sleep(0.01)  # it holds the only read slot; the next two wait
    queued = [
        asyncio.create_task(replays.recover(c, p))
        for c, p in zip(channels[1:3], starts[1:3], strict=True)
    ]
    await asyncio.sleep(0.01)
    assert value(registry, "edumatrix_replays_queued") == 2
    with pytest.raises(ReplayUnavailable) as refused:
        await replays.recover(channels[3], starts[3])
    assert refused.value.retry_after == 2
    assert value(registry, "edumatrix_replays_total", result="refused") == 1
    log.gate.set()
    for found in await asyncio.gather(reading, *queued):
        assert [e.offset for e in found.envelopes] == [2, 3, 4, 5]
    assert value(registry, "edumatrix_replays_total", result="served") == 3


async def test_a_history_that_fails_for_a_moment_is_retried(broadcast: Broadcast) -> None:
    log = CountingLog(MemoryChannelLog(broadcast, size=100, ttl_seconds=600))
    sent = await published(log.inner, 5)
    replays, _, _ = desk(log)
    log.failures = 3
    found = await replays.recover(CH, sent[1].position)
    assert [e.offset for e in found.envelopes] == [3, 4, 5]


async def test_a_history_that_stays_down_ends_in_unavailable(broadcast: Broadcast) -> None:
    log = CountingLog(MemoryChannelLog(broadcast, size=100, ttl_seconds=600))
    sent = await published(log.inner, 5)
    replays, _, registry = desk(log, wait=0.5)
    log.failures = 1_000
    with pytest.raises(ReplayUnavailable, match="ConnectionError"):
        await replays.recover(CH, sent[1].position)
    assert value(registry, "edumatrix_replays_total", result="refused") == 1
    assert value(registry, "edumatrix_replays_queued") == 0


async def test_a_position_past_the_head_gets_its_own_answer(broadcast: Broadcast) -> None:
    log = CountingLog(MemoryChannelLog(broadcast, size=100, ttl_seconds=600))
    sent = await published(log.inner, 5)
    replays, _, _ = desk(log)
    log.gate.clear()
    ok = asyncio.create_task(replays.recover(CH, sent[0].position))
    future = asyncio.create_task(replays.recover(CH, Position(99, sent[0].epoch)))
    await asyncio.sleep(0.01)
    log.gate.set()
    assert [e.offset for e in (await ok).envelopes] == [2, 3, 4, 5]
    assert (await future) == Recovery(sent[-1].position, [], "history_trimmed")


class DroppingBroadcast:
    """The memory broadcaster, with live delivery switched off for a while: what a
    process sees while its Redis pub/sub connection is down."""

    def __init__(self, inner: Broadcast) -> None:
        self.inner = inner
        self.dropping = False

    async def publish(self, channel: str, message: Any) -> None:
        if not self.dropping:
            await self.inner.publish(channel, message)


async def test_a_new_epoch_reaches_subscribers_from_its_start(broadcast: Broadcast) -> None:
    bus = Bus.memory(history_size=100, history_ttl=600, queue_size=100)
    await bus.connect()
    log = bus._log
    assert isinstance(log, MemoryChannelLog)
    dropper = DroppingBroadcast(log._broadcast)
    log._broadcast = dropper  # type: ignore[assignment]
    try:
        async with bus.subscribe(CH) as feed:
            first = await log.publish(CH, "msg", {})
            log._channels.clear()  # Redis restarted empty
            dropper.dropping = True
            lost_live = [await log.publish(CH, "msg", {"i": i}) for i in range(2)]
            dropper.dropping = False
            third = await log.publish(CH, "msg", {})
            got = [await asyncio.wait_for(feed.__anext__(), 2) for _ in range(5)]
        epoch = third.epoch
        assert epoch != first.epoch
        assert got == [first, Reset(Position(0, epoch)), *lost_live, third]
    finally:
        await bus.close()


class Pushed:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_a_member_never_goes_back_behind_what_its_replay_sent() -> None:
    outbox = Pushed()
    member = Member("a", outbox, b"")  # type: ignore[arg-type]
    member.floor = Position(7, "b")
    env = {n: Envelope(n, "b", CH, "msg", {}, 0) for n in range(1, 10)}
    frames = {n: Frames(str(n).encode()) for n in range(1, 10)}
    assert not member.offer(Reset(Position(0, "b")), Frames(b"r0"))  # behind the replay
    assert not member.offer(env[7], frames[7])
    assert member.offer(Reset(Position(8, "b")), Frames(b"r8"))  # a real gap, ahead
    assert not member.offer(env[8], frames[8])  # covered by that reset
    assert member.offer(env[9], frames[9])
    assert member.floor is None  # in step with its group from here on
    assert len(outbox.frames) == 2
    assert outbox.frames[0].endswith(b"r8}") and outbox.frames[1].endswith(b"9}")
