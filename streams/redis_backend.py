"""Our Redis backend for broadcaster's ``Broadcast``.

Why not broadcaster's own: with redis-py 8 its backend delivers nothing and raises
nothing, and after a Redis disconnect its subscriber hangs (broadcaster issue #144).

Guarantees: at-most-once, in-order delivery per channel while connected (Redis
Pub/Sub). When the connection drops, one reader task notices, reconnects with
capped, jittered backoff, resubscribes every channel, and then emits a
:data:`GAP` event on each of them, so whoever consumes the stream knows messages may
have been missed and can recover them from history. Nothing fails silently: the
reader logs every disconnect and exposes ``connected`` for readiness checks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from broadcaster import BroadcastBackend, Event
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)

# Message body of the synthetic event that marks a possible gap after a reconnect.
GAP = "\x00gap"
_DISCONNECTS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


async def close_pubsub(pubsub: PubSub) -> None:
    """Close a pub/sub connection whether or not this redis-py types ``aclose``.

    Why not a ``type: ignore``: redis-py < 8.2 leaves ``PubSub.aclose`` untyped and
    8.2 types it, so an ignore is needed on one and an error on the other; a typed
    alias type-checks on both ends of the locked window.
    """
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    await aclose()


async def connect_pubsub(pubsub: PubSub) -> None:
    """Open the pub/sub connection now, before any subscribe.

    Why: redis-py's ``PubSub`` connects at its first subscribe and assigns the
    connection only after an await, so concurrent first subscribes each opened one,
    and only the last was read: the others' channels never delivered. (Typed alias:
    ``PubSub.connect`` is untyped.)
    """
    connect: Callable[[], Awaitable[None]] = pubsub.connect
    await connect()


class RedisPubSubBackend(BroadcastBackend):
    publish_command = "PUBLISH"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,  # give it one without retries, see connect()
        prefix: str = "emx",
        max_backoff: float = 5.0,
    ) -> None:
        if client is None and url is None:
            raise ValueError("RedisPubSubBackend needs a url or a client")
        self._url = url
        self._client = client
        self._owns_client = client is None
        self._prefix = f"{prefix}:ch:"
        self._max_backoff = max_backoff
        self._channels: set[str] = set()
        self._has_channels = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.connected = False
        self.reconnects = 0

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError("backend not connected")
        return self._client

    def pubsub_channel(self, channel: str) -> str:
        return self._prefix + channel

    async def connect(self) -> None:
        if self._client is None:
            assert self._url is not None
            # No silent retries on this connection: redis-py would reconnect and
            # resubscribe behind our back, and we would never know to fill the gap.
            self._client = Redis.from_url(
                self._url, health_check_interval=10, retry=Retry(NoBackoff(), 0)
            )
        await self._client.ping()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await connect_pubsub(self._pubsub)
        self.connected = True
        self._reader = asyncio.create_task(self._read_forever(), name="redis-pubsub-reader")

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._pubsub is not None:
            await close_pubsub(self._pubsub)
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self.connected = False

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._has_channels.set()
        if self._pubsub is not None and self.connected:
            try:
                await self._pubsub.subscribe(self.pubsub_channel(channel))
            except _DISCONNECTS:
                # The reader resubscribes everything in _channels once it reconnects.
                log.warning("redis.subscribe_deferred", channel=channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if not self._channels:
            self._has_channels.clear()
        if self._pubsub is not None and self.connected:
            try:
                await self._pubsub.unsubscribe(self.pubsub_channel(channel))
            except _DISCONNECTS:
                pass  # a fresh connection will simply not subscribe it again

    async def publish(self, channel: str, message: Any) -> None:
        await self.client.publish(self.pubsub_channel(channel), message)

    async def next_published(self) -> Event:
        return await self._events.get()

    async def check(self) -> None:
        """Raise unless the subscriber connection is up and Redis answers."""
        if not self.connected:
            raise RuntimeError("redis pub/sub connection is down")
        await self.client.ping()

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read_until_disconnected()
            except _DISCONNECTS as exc:
                self.connected = False
                log.warning("redis.pubsub_disconnected", error=str(exc))
                await self._reconnect_with_backoff()
                self.reconnects += 1
                log.info("redis.pubsub_reconnected", channels=len(self._channels))
                for channel in list(self._channels):
                    self._events.put_nowait(Event(channel, GAP))

    async def _reconnect_with_backoff(self) -> None:
        backoff = 0.05
        while True:
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            try:
                await self._reconnect()
                return
            except _DISCONNECTS as exc:
                log.warning("redis.reconnect_failed", error=str(exc), retry_in=backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _read_until_disconnected(self) -> None:
        prefix_len = len(self._prefix)
        while True:
            await self._has_channels.wait()
            assert self._pubsub is not None
            if not self._pubsub.subscribed:
                # redis-py does not read a pubsub connection with no subscriptions yet.
                await asyncio.sleep(0.01)
                continue
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            name = message["channel"]
            data = message["data"]
            self._events.put_nowait(
                Event(
                    (name.decode() if isinstance(name, bytes) else name)[prefix_len:],
                    data.decode() if isinstance(data, bytes) else data,
                )
            )

    async def _reconnect(self) -> None:
        if self._pubsub is not None:
            try:
                await close_pubsub(self._pubsub)
            except _DISCONNECTS:
                pass
        client = self.client
        await client.ping()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        await connect_pubsub(self._pubsub)
        if self._channels:
            await self._pubsub.subscribe(*(self.pubsub_channel(c) for c in self._channels))
        self.connected = True
