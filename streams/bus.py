"""The bus: publish envelopes, subscribe to channels, chosen once from settings.

Embedded mode: broadcaster's ``memory://`` backend and an in-process channel log.
Cluster mode: :class:`RedisPubSubBackend` for fan-out between processes and
:class:`RedisChannelLog` for offsets and history, both on one Redis; on a Redis
Cluster (``redis+cluster://``) :class:`ShardedPubSubBackend` instead, so each
message crosses only the shard of its channel's slot; on a list of independent
Redis servers one backend and one channel log per shard, a channel on the shard of
its hash slot.

Every resume with ``since`` goes through one :class:`ReplayDesk`, which admits and
paces history reads (``streams/replay.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from streams.history import ChannelLog, MemoryChannelLog, RedisChannelLog, ShardedChannelLog
from streams.hub import Feed, Hub, Item, Reset
from streams.redis_client import AnyRedis, cluster_client, parse_redis_url
from streams.redis_sharded import AnyBackend, pubsub_backend
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


def _blocking_pool(url: str, pacing: Pacing) -> BlockingConnectionPool:
    """A blocking pool: when every connection is busy (a herd of replays, a Redis
    coming back), a command waits up to the timeout for one instead of failing at
    once with MaxConnectionsError, as redis-py's default pool does."""
    return BlockingConnectionPool.from_url(
        url,
        max_connections=pacing.redis_pool_size,
        timeout=pacing.redis_pool_timeout_seconds,
        health_check_interval=10,
        # Pooled connections go stale when Redis restarts; retry those few commands
        # on a fresh connection instead of failing the request.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class Bus:
    def __init__(
        self,
        broadcast: Broadcast,
        channel_log: ChannelLog,
        *,
        queue_size: int,
        redis: Sequence[AnyRedis] = (),
        backend: AnyBackend | None = None,
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
        target = parse_redis_url(url)
        backend = pubsub_backend(url, prefix=prefix, max_backoff=pacing.reconnect_max_seconds)
        clients: list[AnyRedis]
        if target.cluster:
            # redis-py's cluster client keeps a pool per node and fails at once when
            # one is exhausted (no blocking pool): the replay desk's concurrency
            # bounds what a herd of resumes can take.
            clients = [
                cluster_client(
                    url,
                    max_connections=pacing.redis_pool_size,
                    health_check_interval=10,
                    retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=5),
                )
            ]
        else:
            clients = [Redis(connection_pool=_blocking_pool(u, pacing)) for u in target.shards]
        logs = [
            RedisChannelLog(
                client,
                prefix=prefix,
                pubsub_name=backend.pubsub_channel,
                size=history_size,
                ttl_seconds=history_ttl,
                cluster=target.cluster,
            )
            for client in clients
        ]
        return cls(
            Broadcast(backend=backend),
            logs[0] if len(logs) == 1 else ShardedChannelLog(logs),
            queue_size=queue_size,
            redis=clients,
            backend=backend,
            pacing=pacing,
            registry=registry,
        )

    @property
    def kind(self) -> str:
        return "redis" if self._redis else "memory"

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
        for client in self._redis:
            await client.aclose()
            if isinstance(client, Redis):
                # A client given a pool does not close it: its connections would linger.
                await client.connection_pool.disconnect()

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
        if self._backend is not None:
            # One Redis: its pubsub connection is up and it answers. A cluster: every
            # master takes a publish and every channel is subscribed at its shard.
            await self._backend.check()
