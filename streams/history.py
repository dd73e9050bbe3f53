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
keeps history in Redis Streams for every server process of a cluster, on one Redis
or a Redis Cluster; :class:`ShardedChannelLog` over a list of independent Redis.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from broadcaster import Broadcast

from streams.envelope import Envelope, Position, assemble, decode, encode_body
from streams.redis_client import AnyRedis, shard_of, sharded


class ChannelLog(Protocol):
    async def publish(
        self, channel: str, kind: str, data: Mapping[str, Any], *, key: str | None = None
    ) -> Envelope:
        """``key``: a publish with a key the channel has already taken (within the
        history TTL, in the same epoch) returns the envelope it got then, and
        publishes nothing: what makes the outbox relay's republish idempotent."""
        ...

    async def position(self, channel: str) -> Position: ...

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None: ...


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a subscriber resuming from a position gets.

    ``reset`` is None when history covered the whole gap: ``envelopes`` are exactly
    the messages after the position. Otherwise the subscriber must refetch its state,
    and ``envelopes`` follow ``reset`` contiguously.
    """

    reset: Position | None
    envelopes: list[Envelope]
    cause: str = ""  # "history_trimmed" or "epoch_changed" when there is a reset


async def recover(log: ChannelLog, channel: str, since: Position) -> Recovery:
    """Everything after ``since`` that history holds, with the least reset possible.

    Why not just "reset to the head": when the epoch changed (Redis lost the
    channel), every message of the new epoch is still in history; a reset to its
    head dropped them, though they were acknowledged. The reset names the new
    epoch's start instead and the new epoch follows. A gap inside one epoch that
    history no longer holds resets to the head: nothing older can be replayed.
    """
    missed = await log.read_since(channel, since)
    if missed is not None:
        return Recovery(None, missed)
    head = await log.position(channel)
    if head.epoch != since.epoch:
        start = Position(0, head.epoch)
        missed = await log.read_since(channel, start)
        if missed is not None:
            return Recovery(start, missed, "epoch_changed")
        return Recovery(head, [], "epoch_changed")
    return Recovery(head, [], "history_trimmed")


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
    # Publish keys of the messages still in ``entries`` (and, between trims, a few
    # older ones): a republish of a retained message returns its envelope.
    keys: dict[str, Envelope] = field(default_factory=dict)


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

    async def publish(
        self, channel: str, kind: str, data: Mapping[str, Any], *, key: str | None = None
    ) -> Envelope:
        body = encode_body(channel, kind, data)
        state = self._state(channel)
        now = time.time()
        if key is not None and (taken := state.keys.get(key)) is not None:
            self._trim(state, now)  # only a republish needs to know what history holds
            if state.entries and taken.offset >= state.entries[0][1]:
                return taken
        state.offset += 1
        published_at_ms = int(now * 1000)
        raw = assemble(state.offset, state.epoch, published_at_ms, body)
        state.entries.append((now, state.offset, raw))
        self._trim(state, now)
        # No await between taking the offset and this publish: in one event loop
        # that makes the pair atomic, and the memory backend keeps publish order.
        await self._broadcast.publish(channel, raw)
        # As RedisChannelLog returns it: the data as given, not its JSON round trip.
        envelope = Envelope(state.offset, state.epoch, channel, kind, data, published_at_ms)
        if key is not None:
            state.keys[key] = envelope
            if len(state.keys) > 2 * self._size:  # amortised: once per `size` keys
                oldest = state.entries[0][1]
                state.keys = {k: e for k, e in state.keys.items() if e.offset >= oldest}
        return envelope

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


# On a Redis Cluster, inserted after the epoch is known (see RedisChannelLog): the
# meta hash also names the master that last wrote the channel ('n'). Replication is
# asynchronous, so after a failover the promoted replica may lack messages the old
# master acknowledged, and would hand their offsets out again in the same epoch:
# live subscribers would drop the new messages as already seen, and resumes would
# miss the lost ones. A write by another master than the last therefore starts a
# new epoch (a reset for subscribers and resumes), never a silent gap.
_NEW_WRITER = """
local me = redis.call('CLUSTER', 'MYID')
local writer = redis.call('HGET', KEYS[1], 'n')
if writer ~= me then
  if writer then
    epoch = ARGV[5]
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
    redis.call('DEL', KEYS[2], KEYS[3])
  end
  redis.call('HSET', KEYS[1], 'n', me)
end
"""
_EPOCH_KNOWN = "  redis.call('DEL', KEYS[2], KEYS[3])\nend\n"

# KEYS[1] meta hash {epoch, offset}; KEYS[2] stream of envelopes with ids 0-<offset>;
# KEYS[3] hash of publish keys taken: key -> "offset:epoch:ms".
# ARGV: pubsub channel, body, maxlen, ttl ms, epoch to use if the channel is new,
# publish key ("" for none).
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- A new history: drop any stream left from a lost one, its ids would clash.
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
if ARGV[6] ~= '' then
  local taken = redis.call('HGET', KEYS[3], ARGV[6])
  if taken then
    local o, e, m = string.match(taken, '^(%d+):([^:]+):(%d+)$')
    -- Only while the message is still in history: a republish of one that is not
    -- would be a message nobody can recover, so it gets a new offset instead.
    if e == epoch and #redis.call('XRANGE', KEYS[2], '0-' .. o, '0-' .. o) == 1 then
      return {tonumber(o), e, tonumber(m)}
    end
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local env = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '","publishedAt":' .. ms
  .. ',' .. ARGV[2]
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '0-' .. offset, 'e', env, 'k', ARGV[6])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '0-' .. offset, 'e', env)
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], env)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[6], offset .. ':' .. epoch .. ':' .. ms)
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  -- Keep only the keys of messages history still holds: rebuilt from the stream
  -- once the hash is twice the history, so amortised O(1) per keyed publish.
  if redis.call('HLEN', KEYS[3]) > 2 * tonumber(ARGV[3]) then
    redis.call('DEL', KEYS[3])
    for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
      local f = entry[2]
      if f[3] == 'k' then
        local id = string.match(entry[1], '^0%-(%d+)$')
        local body = f[2]
        local em = string.match(body, '"publishedAt":(%d+)')
        redis.call('HSET', KEYS[3], f[4], id .. ':' .. epoch .. ':' .. em)
      end
    end
    redis.call('PEXPIRE', KEYS[3], ARGV[4])
  end
end
return {offset, epoch, ms}
"""


class RedisChannelLog:
    """History in Redis Streams, shared by every server process.

    The channel's meta hash has no expiry, so offsets keep growing across idle
    periods; if Redis loses it (restart without persistence), the next publish
    starts a new epoch and clients resuming from the old one get ``recovered:
    false``. A channel's keys share its name as hash tag (``{prefix}:{channel}:meta``),
    so on a Redis Cluster they, and its sharded pubsub channel, live in one slot.
    """

    def __init__(
        self,
        client: AnyRedis,
        *,
        prefix: str,
        pubsub_name: Callable[[str], str],
        size: int,
        ttl_seconds: float,
        cluster: bool = False,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._pubsub_name = pubsub_name
        self._size = size
        self._ttl_ms = int(ttl_seconds * 1000)
        # On a cluster the script SPUBLISHes to the channel's shard (the pubsub name
        # carries the channel as its hash tag, so it shares the keys' slot), and a
        # new writing master starts a new epoch (_NEW_WRITER).
        script = _PUBLISH
        if cluster:
            assert script.count(_EPOCH_KNOWN) == 1
            script = script.replace(_EPOCH_KNOWN, _EPOCH_KNOWN + _NEW_WRITER)
        self._script = client.register_script(sharded(script, cluster))

    def _keys(self, channel: str) -> tuple[str, str]:
        tag = f"{self._prefix}:{{{channel}}}"
        return f"{tag}:meta", f"{tag}:log"

    async def publish(
        self, channel: str, kind: str, data: Mapping[str, Any], *, key: str | None = None
    ) -> Envelope:
        body = encode_body(channel, kind, data)
        meta, log_key = self._keys(channel)
        offset, epoch, ms = await self._script(
            keys=[meta, log_key, f"{self._prefix}:{{{channel}}}:keys"],
            args=[
                self._pubsub_name(channel),
                body,
                self._size,
                self._ttl_ms,
                new_epoch(),
                key or "",
            ],
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


class ShardedChannelLog:
    """Channels spread over independent Redis servers by hash slot; each channel's
    offsets, history and live messages stay on its one shard, so every guarantee of
    :class:`RedisChannelLog` holds per channel."""

    def __init__(self, logs: list[RedisChannelLog]) -> None:
        self._logs = logs

    def _log(self, channel: str) -> RedisChannelLog:
        return self._logs[shard_of(channel, len(self._logs))]

    async def publish(
        self, channel: str, kind: str, data: Mapping[str, Any], *, key: str | None = None
    ) -> Envelope:
        return await self._log(channel).publish(channel, kind, data, key=key)

    async def position(self, channel: str) -> Position:
        return await self._log(channel).position(channel)

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None:
        return await self._log(channel).read_since(channel, since)
