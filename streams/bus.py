"""The bus: publish envelopes, subscribe to channels, chosen once from settings.

Embedded mode: broadcaster's ``memory://`` backend and an in-process channel log.
Cluster mode: :class:`RedisPubSubBackend` for fan-out between processes and
:class:`RedisChannelLog` for offsets and history, both on one Redis.

Every resume with ``since`` goes through one :class:`ReplayDesk`, which admits and
paces history reads (``streams/replay.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from broadcaster import Broadcast
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.envelope import Envelope, Position
from streams.history import ChannelLog, MemoryChannelLog, RedisChannelLog
from streams.hub import Feed, Hub, Item, Reset
from streams.redis_backend import RedisPubSubBackend
from streams.replay import RecoveryMetrics, ReplayDesk

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Pacing:
    """How resumes are admitted (``streams/replay.py``) and the Redis pool sized."""

    replay_concurrency: int = 16
    replay_queue_size: int = 10_000
    replay_wait_seconds: float = 10.0
    redis_pool_size: int = 50
    redis_pool_timeout_seconds: float = 5.0
    reconnect_max_seconds: float = 1.0


class Bus:
    def __init__(
        self,
        broadcast: Broadcast,
        channel_log: ChannelLog,
        *,
        queue_size: int,
        redis: Redis | None = None,
        backend: RedisPubSubBackend | None = None,
        pacing: Pacing = Pacing(),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._broadcast = broadcast
        self._log = channel_log
        self._redis = redis
        self._backend = backend
        self.recovery_metrics = RecoveryMetrics(registry)
        self.hub = Hub(broadcast, channel_log, queue_size=queue_size, metrics=self.recovery_metrics)
        self.replays = ReplayDesk(
            channel_log,
            self.recovery_metrics,
            concurrency=pacing.replay_concurrency,
            queue_size=pacing.replay_queue_size,
            wait_seconds=pacing.replay_wait_seconds,
        )
        self._listener_failed: BaseException | None = None

    @classmethod
    def memory(
        cls,
        *,
        history_size: int,
        history_ttl: float,
        queue_size: int,
        pacing: Pacing = Pacing(),
        registry: CollectorRegistry | None = None,
    ) -> Bus:
        broadcast = Broadcast("memory://")
        channel_log = MemoryChannelLog(broadcast, size=history_size, ttl_seconds=history_ttl)
        return cls(broadcast, channel_log, queue_size=queue_size, pacing=pacing, registry=registry)

    @classmethod
    def redis(
        cls,
        url: str,
        *,
        prefix: str,
        history_size: int,
        history_ttl: float,
        queue_size: int,
        pacing: Pacing = Pacing(),
        registry: CollectorRegistry | None = None,
    ) -> Bus:
        # A blocking pool: when every connection is busy (a herd of replays, a Redis
        # coming back), a command waits up to the timeout for one instead of failing
        # at once with MaxConnectionsError, as redis-py's default pool does.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pacing.redis_pool_size,
            timeout=pacing.redis_pool_timeout_seconds,
            health_check_interval=10,
            # Pooled connections go stale when Redis restarts; retry those few
            # commands on a fresh connection instead of failing the request.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        client = Redis(connection_pool=pool)
        backend = RedisPubSubBackend(url, prefix=prefix, max_backoff=pacing.reconnect_max_seconds)
        broadcast = Broadcast(backend=backend)
        channel_log = RedisChannelLog(
            client,
            prefix=prefix,
            pubsub_prefix=backend.pubsub_channel(""),
            size=history_size,
            ttl_seconds=history_ttl,
        )
        return cls(
            broadcast,
            channel_log,
            queue_size=queue_size,
            redis=client,
            backend=backend,
            pacing=pacing,
            registry=registry,
        )

    @property
    def kind(self) -> str:
        return "redis" if self._redis is not None else "memory"

    async def connect(self) -> None:
        await self._broadcast.connect()
        # broadcaster's listener task dies silently on an error; make its death loud.
        listener: asyncio.Task[None] = self._broadcast._listener_task
        listener.add_done_callback(self._on_listener_done)

    def _on_listener_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._listener_failed = task.exception()
        log.critical("bus.listener_died", error=repr(self._listener_failed))

    async def close(self) -> None:
        await self.replays.close()
        await self.hub.close()
        await self._broadcast.disconnect()
        if self._redis is not None:
            await self._redis.aclose()
            # A client given a pool does not close it: its connections would linger.
            await self._redis.connection_pool.disconnect()

    async def publish(
        self, channel: str, kind: str, data: Mapping[str, Any], *, key: str | None = None
    ) -> Envelope:
        return await self._log.publish(channel, kind, data, key=key)

    def subscribe(
        self, channel: str, on_overflow: Callable[[], None] | None = None
    ) -> AbstractAsyncContextManager[Feed]:
        return self.hub.subscribe(channel, on_overflow)

    @asynccontextmanager
    async def stream(
        self,
        channel: str,
        since: Position | None = None,
        on_overflow: Callable[[], None] | None = None,
    ) -> AsyncIterator[AsyncIterator[Item]]:
        """Replay what followed ``since`` from history, then continue live.

        The live subscription starts *before* history is read, and live messages
        already replayed are skipped by offset, so nothing published meanwhile is
        lost or seen twice. If history does not reach back to ``since``, the first
        item is a :class:`Reset` (see :func:`streams.history.recover`). Raises
        :class:`streams.replay.ReplayUnavailable` when history cannot be read in time.
        """
        async with self.hub.subscribe(channel, on_overflow) as feed:
            yield self._resume(channel, feed, since)

    async def _resume(
        self, channel: str, feed: Feed, since: Position | None
    ) -> AsyncIterator[Item]:
        last = since
        left: str | None = None  # an epoch the replay left: never go back to it
        if since is not None:
            found = await self.replays.recover(channel, since)
            if found.reset is not None:
                last = found.reset
                if last.epoch != since.epoch:
                    left = since.epoch
                yield Reset(last)
            for envelope in found.envelopes:
                last = envelope.position
                yield envelope
        async for item in feed:
            # Monotonic: nothing at or below what this subscription already has, in
            # its epoch, whether a message in flight or a hub reset behind a replay,
            # and nothing of an epoch the replay already left for a newer one.
            if item.position.epoch == left:
                continue
            if last is not None and item.position.epoch == last.epoch:
                if item.position.offset <= last.offset:
                    continue
            last = item.position
            yield item

    async def position(self, channel: str) -> Position:
        return await self._log.position(channel)

    async def read_since(self, channel: str, since: Position) -> list[Envelope] | None:
        return await self._log.read_since(channel, since)

    async def check(self) -> None:
        """Raise if this process cannot currently publish or receive."""
        if self._listener_failed is not None:
            raise RuntimeError(f"bus listener died: {self._listener_failed!r}")
        if self._redis is not None:
            await self._redis.ping()
        if self._backend is not None and not self._backend.connected:
            raise RuntimeError("redis pub/sub connection is down")
