"""Per-process fan-out: one bus subscription per channel, shared by every local
subscriber of that channel.

Each message is decoded once per process, then offered to every local feed. Feeds
are bounded: a subscriber that falls ``queue_size`` messages behind is cut off with
:class:`SlowSubscriber` instead of growing memory or holding up the others.

The pump of a channel remembers the last offset it delivered. When the bus reports
a possible gap (Redis reconnect) or an offset jumps, it fills the hole from the
channel log's history, so local subscribers see contiguous offsets; if history no
longer reaches back, every feed of the channel gets a :class:`Reset` marker, as
late as history allows (:func:`streams.history.recover`): after Redis lost a
channel, the reset names the new epoch's start and its messages follow. A pump's
positions only move forward.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from broadcaster import Broadcast

from streams.envelope import Envelope, EnvelopeError, Position, decode
from streams.history import ChannelLog, recover
from streams.redis_backend import GAP

if TYPE_CHECKING:
    from streams.replay import RecoveryMetrics

log = structlog.get_logger(__name__)


class SlowSubscriber(Exception):
    """The subscriber fell too far behind and was dropped."""


class HubClosed(Exception):
    """The server is shutting down; the client should reconnect elsewhere."""


class ChannelUnavailable(Exception):
    """The channel's history stayed unreachable longer than a gap may wait: the
    subscription ends with this (never silently) and resumes with ``since`` later."""

    retry_after = 5


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
        self._closed_by: Exception | None = None

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

    def close(self, reason: Exception | None = None) -> None:
        """End the feed: its reader gets ``reason`` (default :class:`HubClosed`)."""
        self._closed_by = reason
        self._queue._queue.clear()  # type: ignore[attr-defined]  # drop, we are leaving
        self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        if self._overflowed:
            raise SlowSubscriber("subscriber fell behind and was disconnected")
        item = await self._queue.get()
        if item is _CLOSED:
            raise self._closed_by or HubClosed("server shutting down")
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
        metrics: RecoveryMetrics | None = None,
    ) -> None:
        self._broadcast = broadcast
        self._metrics = metrics
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
                await self._start_at_head(topic)
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
            # The next subscriber starts a fresh pump instead of joining this dead one,
            # and those waiting for this one to be ready are let through to the error.
            if self._topics.get(topic.channel) is topic:
                del self._topics[topic.channel]
            topic.ready.set()
            for feed in list(topic.feeds):
                feed.close(ChannelUnavailable("channel history unreachable; resume with since"))
            raise

    async def _start_at_head(self, topic: _Topic) -> None:
        """Know the channel's position from the start, not from its first message.

        Why: a pump that had delivered nothing yet could not tell that Redis lost
        the channel meanwhile; the first message of the new epoch reached its
        subscribers with no reset, and the new epoch's earlier messages not at all.
        Without Redis now, the pump starts unknowing, as before, and learns at the
        first message.
        """
        try:
            topic.last = await self._log.position(topic.channel)
        except Exception as exc:
            log.warning("hub.head_unknown", channel=topic.channel, error=repr(exc))

    async def _deliver(self, topic: _Topic, envelope: Envelope) -> None:
        last = topic.last
        if last is not None and (envelope.epoch != last.epoch or envelope.offset > last.offset + 1):
            # A gap, or the channel's history was lost (Redis restarted empty): fill
            # from history; for a new epoch that is a reset to its start, then its
            # messages before this one.
            await self._fill_retrying(topic, envelope)
            last = topic.last
        if last is not None and (envelope.epoch != last.epoch or envelope.offset <= last.offset):
            return  # already delivered from history, or of an epoch lost meanwhile
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
        found = await recover(self._log, topic.channel, last)
        if found.reset is not None:
            log.warning(
                "hub.reset",
                channel=topic.channel,
                since=last.offset,
                to=found.reset.offset,
                cause=found.cause,
            )
            if self._metrics is not None:
                self._metrics.resets.labels(cause=found.cause).inc(len(topic.feeds))
            for feed in list(topic.feeds):
                feed.offer(Reset(found.reset))
            topic.last = found.reset
        for envelope in found.envelopes:
            if upto is not None and envelope.epoch == upto.epoch and envelope.offset >= upto.offset:
                break
            self._offer(topic, envelope)

    def _offer(self, topic: _Topic, envelope: Envelope) -> None:
        topic.last = envelope.position
        for feed in topic.feeds:
            feed.offer(envelope)
