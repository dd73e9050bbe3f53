"""Per-process fan-out: one bus subscription per channel, shared by every local
subscriber of that channel.

Each message is decoded once per process, then offered to every local feed. Feeds
are bounded: a subscriber that falls ``queue_size`` messages behind is cut off with
:class:`SlowSubscriber` instead of growing memory or holding up the others.

The pump of a channel remembers the last offset it delivered. When the bus reports
a possible gap (Redis reconnect) or an offset jumps, it fills the hole from the
channel log's history, so local subscribers see contiguous offsets; if history no
longer reaches back, every feed of the channel gets a :class:`Reset` marker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import structlog
from broadcaster import Broadcast

from streams.envelope import Envelope, EnvelopeError, Position, decode
from streams.history import ChannelLog
from streams.redis_backend import GAP

log = structlog.get_logger(__name__)


class SlowSubscriber(Exception):
    """The subscriber fell too far behind and was dropped."""


class HubClosed(Exception):
    """The server is shutting down; the client should reconnect elsewhere."""


@dataclass(frozen=True, slots=True)
class Reset:
    """History could not fill a gap: the subscriber must refetch from ``position``."""

    position: Position


Item = Envelope | Reset
_CLOSED = object()


class Feed:
    """One subscriber's bounded view of a channel."""

    def __init__(self, maxsize: int, on_overflow: Callable[[], None] | None = None) -> None:
        self._queue: asyncio.Queue[Item | object] = asyncio.Queue(maxsize)
        self._overflowed = False
        self._on_overflow = on_overflow

    def offer(self, item: Item) -> None:
        if self._overflowed:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Stop queueing at once; the owner disconnects the subscriber, which may be
            # stuck writing to a peer that stopped reading and never pull again.
            self._overflowed = True
            if self._on_overflow is not None:
                self._on_overflow()

    def backlog(self) -> int:
        """Items already waiting behind the one just taken (a burst, for coalescing)."""
        return self._queue.qsize()

    def close(self) -> None:
        self._queue._queue.clear()  # type: ignore[attr-defined]  # drop, we are leaving
        self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        if self._overflowed:
            raise SlowSubscriber("subscriber fell behind and was disconnected")
        item = await self._queue.get()
        if item is _CLOSED:
            raise HubClosed("server shutting down")
        assert isinstance(item, Envelope | Reset)
        return item


@dataclass
class _Topic:
    channel: str
    feeds: set[Feed] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last: Position | None = None


class Hub:
    def __init__(
        self,
        broadcast: Broadcast,
        channel_log: ChannelLog,
        *,
        queue_size: int,
        fill_timeout: float = 30.0,
    ) -> None:
        self._broadcast = broadcast
        self._fill_timeout = fill_timeout
        self._log = channel_log
        self._queue_size = queue_size
        self._topics: dict[str, _Topic] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    @property
    def channel_count(self) -> int:
        return len(self._topics)

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    @asynccontextmanager
    async def subscribe(
        self, channel: str, on_overflow: Callable[[], None] | None = None
    ) -> AsyncIterator[Feed]:
        """Live messages of ``channel`` from the moment this returns."""
        if self._closed:
            raise HubClosed("server shutting down")
        feed = Feed(self._queue_size, on_overflow)
        async with self._lock(channel):
            topic = self._topics.get(channel)
            if topic is None:
                topic = self._topics[channel] = _Topic(channel)
                topic.task = asyncio.create_task(self._pump(topic), name=f"pump:{channel}")
            topic.feeds.add(feed)
        try:
            await topic.ready.wait()
            yield feed
        finally:
            topic.feeds.discard(feed)
            if not topic.feeds:
                await self._retire(topic)

    async def _retire(self, topic: _Topic) -> None:
        async with self._lock(topic.channel):
            if topic.feeds or self._topics.get(topic.channel) is not topic:
                return
            del self._topics[topic.channel]
            if topic.task is not None:
                topic.task.cancel()
                with suppress(asyncio.CancelledError):
                    await topic.task

    async def close(self) -> None:
        """End every feed (clients see :class:`HubClosed`) and stop the pumps."""
        self._closed = True
        for topic in list(self._topics.values()):
            for feed in list(topic.feeds):
                feed.close()
            if topic.task is not None:
                topic.task.cancel()
                with suppress(asyncio.CancelledError):
                    await topic.task
        self._topics.clear()

    async def _pump(self, topic: _Topic) -> None:
        try:
            async with self._broadcast.subscribe(topic.channel) as subscriber:
                topic.ready.set()
                while True:
                    event = await subscriber.get()
                    if event.message == GAP:
                        await self._fill_retrying(topic, None)
                        continue
                    try:
                        envelope = decode(event.message)
                    except EnvelopeError:
                        log.error("hub.bad_envelope", channel=topic.channel)
                        continue
                    await self._deliver(topic, envelope)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A dead pump would leave its subscribers waiting forever: end them instead.
            log.exception("hub.pump_failed", channel=topic.channel)
            for feed in list(topic.feeds):
                feed.close()
            raise

    async def _deliver(self, topic: _Topic, envelope: Envelope) -> None:
        last = topic.last
        if last is not None and envelope.epoch != last.epoch:
            # The channel's history was lost (Redis restarted empty): say so.
            log.warning("hub.epoch_changed", channel=topic.channel, epoch=envelope.epoch)
            for feed in list(topic.feeds):
                feed.offer(Reset(Position(envelope.offset - 1, envelope.epoch)))
        elif last is not None:
            if envelope.offset <= last.offset:
                return  # already delivered from history
            if envelope.offset > last.offset + 1:
                await self._fill_retrying(topic, envelope)
                if topic.last is not None and envelope.offset <= topic.last.offset:
                    return
        self._offer(topic, envelope)

    async def _fill_retrying(self, topic: _Topic, upto: Envelope | None) -> None:
        """Fill a gap, riding out a Redis that is still coming back.

        Later messages must wait for the gap (order is the promise), so this retries
        with capped, jittered backoff; if history stays unreachable, the pump fails
        and its subscribers are ended, so clients resubscribe with ``since``.
        """
        delay = 0.05
        deadline = asyncio.get_running_loop().time() + self._fill_timeout
        while True:
            try:
                await self._fill(topic, upto)
                return
            except Exception as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("hub.fill_retry", channel=topic.channel, error=repr(exc))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)

    async def _fill(self, topic: _Topic, upto: Envelope | None) -> None:
        """Recover what the bus skipped after ``topic.last`` from history."""
        last = topic.last
        if last is None:
            return
        missed = await self._log.read_since(topic.channel, last)
        if missed is None:
            position = await self._log.position(topic.channel)
            log.warning("hub.gap_unrecoverable", channel=topic.channel, since=last.offset)
            for feed in list(topic.feeds):
                feed.offer(Reset(position))
            topic.last = position
            return
        for envelope in missed:
            if upto is not None and envelope.offset >= upto.offset:
                break
            self._offer(topic, envelope)

    def _offer(self, topic: _Topic, envelope: Envelope) -> None:
        topic.last = envelope.position
        for feed in topic.feeds:
            feed.offer(envelope)
