"""Channel logs: assign offsets, keep recent history, publish — in one atomic step.

Guarantees of every :class:`ChannelLog`:

* ``publish`` gives the message the next offset of its channel, stores it in the
  channel's history and hands it to the bus as one step, so subscribers and history
  can never disagree on an offset. Offsets within one epoch are contiguous.
* History keeps at most ``size`` messages per channel, each for ``ttl`` seconds.
* ``read_since(channel, position)`` returns every retained message after
  ``position`` in order, or ``None`` when history no longer reaches back that far
  (trimmed, expired, or the epoch changed because the history was lost).

:class:`MemoryChannelLog` serves embedded mode (one process); :class:`RedisChannelLog`
keeps history in Redis Streams for every server process of a cluster.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from broadcaster import Broadcast
from redis.asyncio import Redis

from streams.envelope import Envelope, Position, assemble, decode, encode_body


class ChannelLog(Protocol):
    async def publish(self, channel: str, kind: str, data: Mapping[str, Any]) -> Envelope: ...

    async def position(self, channel: str) -> Position: ...

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None: ...


def new_epoch() -> str:
    return secrets.token_hex(4)


def _recoverable(retained: list[Envelope], since: Position, head: Position) -> bool:
    """Whether ``retained`` (oldest first) covers everything after ``since``."""
    if since.epoch != head.epoch or since.offset > head.offset:
        return False
    if since.offset == head.offset:
        return True
    return bool(retained) and retained[0].offset <= since.offset + 1


@dataclass
class _MemoryChannel:
    epoch: str
    offset: int = 0
    # (published at, offset, the envelope as subscribers received it): kept as its
    # wire text and decoded only when a client replays it. Most messages are never
    # replayed, and decoding each one at publish time was ~2% of a publish.
    entries: deque[tuple[float, int, str]] = field(default_factory=deque)


class MemoryChannelLog:
    """History in this process only; a restart starts every channel in a new epoch."""

    def __init__(self, broadcast: Broadcast, *, size: int, ttl_seconds: float) -> None:
        self._broadcast = broadcast
        self._size = size
        self._ttl = ttl_seconds
        self._channels: dict[str, _MemoryChannel] = {}

    def _state(self, channel: str) -> _MemoryChannel:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _MemoryChannel(epoch=new_epoch())
        return state

    def _trim(self, state: _MemoryChannel, now: float) -> None:
        while state.entries and (
            len(state.entries) > self._size or state.entries[0][0] < now - self._ttl
        ):
            state.entries.popleft()

    async def publish(self, channel: str, kind: str, data: Mapping[str, Any]) -> Envelope:
        body = encode_body(channel, kind, data)
        state = self._state(channel)
        now = time.time()
        state.offset += 1
        published_at_ms = int(now * 1000)
        raw = assemble(state.offset, state.epoch, published_at_ms, body)
        state.entries.append((now, state.offset, raw))
        self._trim(state, now)
        # No await between taking the offset and this publish: in one event loop
        # that makes the pair atomic, and the memory backend keeps publish order.
        await self._broadcast.publish(channel, raw)
        # As RedisChannelLog returns it: the data as given, not its JSON round trip.
        return Envelope(state.offset, state.epoch, channel, kind, data, published_at_ms)

    async def position(self, channel: str) -> Position:
        state = self._state(channel)
        return Position(state.offset, state.epoch)

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None:
        state = self._state(channel)
        self._trim(state, time.time())
        retained = [decode(raw) for _, offset, raw in state.entries if offset > since.offset]
        if not _recoverable(retained, since, Position(state.offset, state.epoch)):
            return None
        return retained


# KEYS[1] meta hash {epoch, offset}; KEYS[2] stream of envelopes with ids 0-<offset>.
# ARGV: pubsub channel, body, maxlen, ttl ms, epoch to use if the channel is new.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- A new history: drop any stream left from a lost one, its ids would clash.
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local env = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '","publishedAt":' .. ms
  .. ',' .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '0-' .. offset, 'e', env)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], env)
return {offset, epoch, ms}
"""


class RedisChannelLog:
    """History in Redis Streams, shared by every server process.

    The channel's meta hash has no expiry, so offsets keep growing across idle
    periods; if Redis loses it (restart without persistence), the next publish
    starts a new epoch and clients resuming from the old one get ``recovered:
    false``. Keys share a hash tag, so the script also runs on Redis Cluster.
    """

    def __init__(
        self, client: Redis, *, prefix: str, pubsub_prefix: str, size: int, ttl_seconds: float
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._pubsub_prefix = pubsub_prefix
        self._size = size
        self._ttl_ms = int(ttl_seconds * 1000)
        self._script = client.register_script(_PUBLISH)

    def _keys(self, channel: str) -> tuple[str, str]:
        tag = f"{self._prefix}:{{{channel}}}"
        return f"{tag}:meta", f"{tag}:log"

    async def publish(self, channel: str, kind: str, data: Mapping[str, Any]) -> Envelope:
        body = encode_body(channel, kind, data)
        offset, epoch, ms = await self._script(
            keys=list(self._keys(channel)),
            args=[self._pubsub_prefix + channel, body, self._size, self._ttl_ms, new_epoch()],
        )
        epoch_text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        return Envelope(int(offset), epoch_text, channel, kind, data, int(ms))

    async def position(self, channel: str) -> Position:
        meta, _ = self._keys(channel)
        epoch, offset = await self._client.hmget(meta, ["epoch", "offset"])
        if epoch is None:
            # Reserve the epoch now, so a client that starts from this position is
            # told when history was lost before the first message arrives.
            await self._client.hsetnx(meta, "epoch", new_epoch())
            epoch, offset = await self._client.hmget(meta, ["epoch", "offset"])
        text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        return Position(int(offset or 0), text)

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None:
        head = await self.position(channel)
        _, log_key = self._keys(channel)
        min_ms = int(time.time() * 1000) - self._ttl_ms
        entries = await self._client.xrange(log_key, min=f"0-{since.offset + 1}", max="+")
        retained = [decode(fields[b"e"]) for _, fields in entries or () if fields]
        retained = [env for env in retained if env.published_at_ms >= min_ms]
        if not _recoverable(retained, since, head):
            return None
        return retained
