"""The bus backend for Redis Cluster: sharded Pub/Sub, one reader per shard.

Why not classic Pub/Sub on a cluster: ``PUBLISH`` is broadcast over the cluster bus
to every node, so each node carries every message and adding nodes adds no fan-out
capacity. ``SPUBLISH`` goes only to the master (and replicas) of the channel's hash
slot. A channel ``c`` is published as ``{prefix}:ch:{c}``: the hash tag puts it in
the slot of its history keys (``{prefix}:{c}:meta``, ``…:log``), so the history
script can ``SPUBLISH`` in the same atomic step that gives the message its offset.

Why not redis-py's ``ClusterPubSub``: after a failover it stays unsubscribed until
something else refreshes its slot map, and it raises a connection error only when
every node failed, so one shard's gap could not be told apart
(docs/redis-cluster-notes.md). Here each master that owns a subscribed channel has
its own connection and reader (a :class:`_Shard`). When a shard breaks (its node
died, or Redis dropped its channels because their slots moved to another master
after a failover or a resharding), only that shard's channels are re-placed: the
slot map is refreshed, each channel is subscribed at its slot's current master,
and then a :data:`GAP` event is emitted on each of them, so the hub recovers what
was published meanwhile from history. Channels of the other shards go on
untouched and get no gap marker. Retries back off (capped, jittered) for as long
as it takes; nothing fails silently.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from broadcaster import BroadcastBackend, Event
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streams.redis_backend import GAP, RedisPubSubBackend, close_pubsub, connect_pubsub
from streams.redis_client import REDIS_DOWN, cluster_client, parse_redis_url, shard_of
from streams.tasks import loud

log = structlog.get_logger(__name__)

# What can break a shard or a placement: the node is gone or answers that the
# cluster is reconfiguring (MOVED, CLUSTERDOWN, an uncovered slot).
_FAILURES: tuple[type[BaseException], ...] = (*REDIS_DOWN, ConnectionError)
# How long /readyz waits for one shard's probe publish (a paused or failing-over
# master must not hold the health check).
PROBE_SECONDS = 2.0
# How often the slot map is read again when nothing broke. A master that hangs
# (stopped, cut off by the network) keeps its TCP connection open and sends
# nothing, so its readers never see an error; once Redis has promoted its
# replica, this check finds its channels' slots served elsewhere and moves them.
TOPOLOGY_SECONDS = 2.0
# Socket limits of the topology client: a hung node must not hold a refresh.
SOCKET_SECONDS = 2.0


class _Shard:
    """One master's connection and the channels subscribed there."""

    def __init__(self, owner: ShardedPubSubBackend, node: ClusterNode) -> None:
        self.owner = owner
        self.name = node.name
        # No retries: redis-py would reconnect and resubscribe behind our back, and
        # nobody would know to fill the gap.
        self.client: Redis = Redis.from_url(
            owner.node_url(node.host, node.port),
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),
        )
        self.pubsub: PubSub = self.client.pubsub()
        self._connecting = asyncio.Lock()
        self._has_channels = asyncio.Event()
        self.channels: set[str] = set()
        # Our own SUNSUBSCRIBEs whose replies have not come back: their reply must
        # not read as Redis dropping a channel re-subscribed meanwhile.
        self._leaving: Counter[str] = Counter()
        self.failed = False
        self.reader = asyncio.create_task(self._read(), name=f"redis-shard-{self.name}")

    async def add(self, channels: list[str]) -> None:
        self.channels.update(channels)
        self._has_channels.set()
        async with self._connecting:  # once, before any subscribe (connect_pubsub)
            if self.pubsub.connection is None:
                await connect_pubsub(self.pubsub)
        # One SSUBSCRIBE per channel: Redis refuses one naming several slots.
        for channel in channels:
            await self.pubsub.ssubscribe(self.owner.pubsub_channel(channel))

    async def remove(self, channel: str) -> None:
        self.channels.discard(channel)
        if not self.failed:
            self._leaving[channel] += 1
            with suppress(*_FAILURES):
                # Bounded: the node may hang (its channel was moved off it).
                await asyncio.wait_for(
                    self.pubsub.sunsubscribe(self.owner.pubsub_channel(channel)), SOCKET_SECONDS
                )

    async def close(self) -> None:
        self.reader.cancel()
        with suppress(asyncio.CancelledError, *_FAILURES):
            await self.reader
        with suppress(*_FAILURES):
            await close_pubsub(self.pubsub)
        with suppress(*_FAILURES):
            await self.client.aclose()

    async def _read(self) -> None:
        try:
            while True:
                if not self.pubsub.subscribed:
                    # redis-py does not read a pubsub connection with no subscriptions:
                    # wait for a channel (a shard can stay empty for good, e.g. a
                    # master demoted by a failover), or for one in flight.
                    if not self.channels:
                        self._has_channels.clear()
                        await self._has_channels.wait()
                    else:
                        await asyncio.sleep(0.01)
                    continue
                message = await self.pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._handle(message)
        except asyncio.CancelledError:
            raise
        except _FAILURES as exc:
            log.warning("redis.shard_disconnected", node=self.name, error=repr(exc))
            self.owner.shard_failed(self)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in ("smessage", "sunsubscribe"):
            return
        channel = self.owner.channel_of(message["channel"])
        if kind == "smessage":
            data = message["data"]
            self.owner.deliver(channel, data.decode() if isinstance(data, bytes) else data)
        elif self._leaving[channel] > 0:
            self._leaving[channel] -= 1  # the reply to our own unsubscribe
            if not self._leaving[channel]:
                del self._leaving[channel]
        elif channel in self.channels:
            # Not asked for: Redis dropped the channel because its slot now lives
            # on another master (failover, resharding).
            log.warning("redis.shard_channel_moved", node=self.name, channel=channel)
            self.channels.discard(channel)
            self.owner.rehome(self, [channel])


class ShardedPubSubBackend(BroadcastBackend):
    """A broadcaster backend over a Redis Cluster's sharded Pub/Sub."""

    publish_command = "SPUBLISH"

    def __init__(self, url: str, *, prefix: str = "emx", max_backoff: float = 5.0) -> None:
        target = parse_redis_url(url)
        if not target.cluster:
            raise ValueError("ShardedPubSubBackend needs a redis+cluster:// URL")
        self._url = url
        self._node_url = urlsplit(target.url)
        self._prefix = f"{prefix}:ch:"
        self._max_backoff = max_backoff
        self._cluster: RedisCluster | None = None
        self._wanted: set[str] = set()
        self._shards: dict[str, _Shard] = {}
        self._placed: dict[str, _Shard] = {}
        self._homeless: set[str] = set()
        self._repair_needed = asyncio.Event()
        self._repairer: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconnects = 0

    # -- names ------------------------------------------------------------------

    def pubsub_channel(self, channel: str) -> str:
        return f"{self._prefix}{{{channel}}}"

    def channel_of(self, name: bytes | str) -> str:
        text = name.decode() if isinstance(name, bytes) else name
        return text[len(self._prefix) + 1 : -1]

    def node_url(self, host: str, port: int | str) -> str:
        """The URL's credentials and options, at one node."""
        parts = self._node_url
        credentials = parts.netloc.rpartition("@")[0]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6
        return urlunsplit(
            (parts.scheme, f"{credentials}@{where}" if credentials else where, "", parts.query, "")
        )

    # -- lifecycle --------------------------------------------------------------

    @property
    def cluster(self) -> RedisCluster:
        if self._cluster is None:
            raise RuntimeError("backend not connected")
        return self._cluster

    @property
    def connected(self) -> bool:
        """Every wanted channel is subscribed at a live shard."""
        return (
            self._cluster is not None
            and not self._homeless
            and not any(s.failed for s in self._shards.values())
        )

    async def connect(self) -> None:
        self._cluster = cluster_client(
            self._url, socket_timeout=SOCKET_SECONDS, socket_connect_timeout=SOCKET_SECONDS
        )
        await self._cluster.initialize()
        self._repairer = asyncio.create_task(self._repair_forever(), name="redis-shard-repair")
        self._repairer.add_done_callback(loud("redis.task_died"))

    async def disconnect(self) -> None:
        if self._repairer is not None:
            self._repairer.cancel()
            with suppress(asyncio.CancelledError):
                await self._repairer
        for shard in list(self._shards.values()):
            await shard.close()
        self._shards.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SOCKET_SECONDS + 1)
        if self._cluster is not None:
            await self._cluster.aclose()

    # -- broadcaster's interface -------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)
        if channel in self._placed or channel in self._homeless:
            return
        try:
            shard = self._shard_for(self._owner(channel))
        except _FAILURES as exc:
            log.warning("redis.subscribe_deferred", channel=channel, error=repr(exc))
            self._homeless.add(channel)
            self._repair_needed.set()
            return
        self._placed[channel] = shard
        try:
            await shard.add([channel])
        except _FAILURES as exc:
            log.warning("redis.subscribe_deferred", channel=channel, error=repr(exc))
            self.shard_failed(shard)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._homeless.discard(channel)
        shard = self._placed.pop(channel, None)
        if shard is not None:
            await shard.remove(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self.cluster.spublish(self.pubsub_channel(channel), message)

    async def next_published(self) -> Event:
        return await self._events.get()

    def deliver(self, channel: str, message: str) -> None:
        self._events.put_nowait(Event(channel, message))

    # -- placement and repair ----------------------------------------------------

    def _owner_of_name(self, name: str) -> str:
        """Compared by name: a slot map refresh may hold new node objects."""
        return self.cluster.nodes_manager.get_node_from_slot(self.cluster.keyslot(name)).name

    def _owner(self, channel: str) -> ClusterNode:
        """The master of the channel's slot, from the cached slot map."""
        slot = self.cluster.keyslot(self.pubsub_channel(channel))
        return self.cluster.nodes_manager.get_node_from_slot(slot)

    def _shard_for(self, node: ClusterNode) -> _Shard:
        shard = self._shards.get(node.name)
        if shard is None or shard.failed:
            shard = self._shards[node.name] = _Shard(self, node)
        return shard

    def shard_failed(self, shard: _Shard) -> None:
        """Its connection broke: every channel it held needs a new home."""
        if shard.failed:
            return
        shard.failed = True
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        lost = [c for c, s in self._placed.items() if s is shard]
        self._background(shard.close())
        self.rehome(shard, lost)

    def rehome(self, shard: _Shard, channels: list[str]) -> None:
        for channel in channels:
            if self._placed.get(channel) is shard:
                del self._placed[channel]
            if channel in self._wanted:
                self._homeless.add(channel)
        if self._homeless:
            self._repair_needed.set()

    async def _repair_forever(self) -> None:
        """Re-place broken shards' channels; between repairs, check the slot map
        every TOPOLOGY_SECONDS. Never ends on an error: an unexpected one is logged
        and the loop goes on after a backoff (a dead repairer would leave every
        later break unrepaired, silently)."""
        loop = asyncio.get_running_loop()
        backoff, last = 0.05, -10.0
        while True:
            try:
                await asyncio.wait_for(self._repair_needed.wait(), TOPOLOGY_SECONDS)
            except TimeoutError:
                try:
                    await asyncio.wait_for(self._recheck(), TOPOLOGY_SECONDS + SOCKET_SECONDS)
                except Exception as exc:  # noqa: BLE001 - logged; the loop must go on
                    log.warning("redis.topology_check_failed", error=repr(exc))
                continue
            self._repair_needed.clear()
            if loop.time() - last < 1.0:
                # Broke again right after a repair (a node that accepts and then
                # drops us): back off instead of spinning.
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._max_backoff)
            else:
                backoff = 0.05
            last = loop.time()
            while self._homeless:
                try:
                    await self._repair()
                    backoff = 0.05
                except Exception as exc:  # noqa: BLE001 - _FAILURES and the unforeseen
                    log.warning(
                        "redis.shard_repair_failed",
                        channels=len(self._homeless),
                        error=repr(exc),
                        retry_in=round(backoff, 3),
                    )
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, self._max_backoff)

    async def _recheck(self) -> None:
        """Move channels whose slot another master serves now (a hung master that
        Redis failed over), and close shards left empty on nodes that no longer
        serve slots."""
        await self.cluster.nodes_manager.initialize()
        moved: dict[_Shard, list[str]] = {}
        for channel, shard in list(self._placed.items()):
            if self._owner(channel).name != shard.name:
                moved.setdefault(shard, []).append(channel)
        for shard, channels in moved.items():
            log.warning("redis.shard_channels_moved", node=shard.name, channels=len(channels))
            for channel in channels:
                shard.channels.discard(channel)
                self._background(shard.remove(channel))
            self.rehome(shard, channels)
        masters = {n.name for n in self.cluster.get_primaries()}
        for name, shard in list(self._shards.items()):
            if name not in masters and not shard.channels and not shard.failed:
                del self._shards[name]
                self._background(shard.close())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Fire and forget, but kept (the loop holds tasks weakly) and awaited by
        disconnect()."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self) -> None:
        """Refresh the slot map, subscribe each homeless channel at its slot's
        master, then mark a gap on it. Raises if any group could not be placed (the
        rest stay placed)."""
        await self.cluster.nodes_manager.initialize()
        groups: dict[str, tuple[ClusterNode, list[str]]] = {}
        for channel in sorted(self._homeless):
            node = self._owner(channel)
            groups.setdefault(node.name, (node, []))[1].append(channel)
        failure: BaseException | None = None
        for node, channels in groups.values():
            shard = self._shard_for(node)
            try:
                await shard.add(channels)
            except _FAILURES as exc:
                failure = exc
                self.shard_failed(shard)
                continue
            if shard.failed:  # broke while subscribing: its channels are homeless again
                failure = RuntimeError(f"shard {node.name} failed while subscribing")
                continue
            placed = [c for c in channels if c in self._homeless and c in self._wanted]
            for channel in placed:
                self._homeless.discard(channel)
                self._placed[channel] = shard
            self.reconnects += 1
            log.info("redis.shard_subscribed", node=node.name, channels=len(placed))
            for channel in placed:
                self.deliver(channel, GAP)
        if failure is not None:
            raise failure

    async def check(self) -> None:
        """Raise unless every master takes a publish and every channel is subscribed.

        Why publish and not PING one node: a cluster that lost a shard still answers
        pings on the others, while every channel of that shard is undeliverable.
        """
        if self._homeless:
            raise RuntimeError(f"{len(self._homeless)} channels wait for their Redis shard")
        nodes = self.cluster.get_primaries()
        results = await asyncio.gather(
            *(
                asyncio.wait_for(self.cluster.spublish(self._probe(n), b""), PROBE_SECONDS)
                for n in nodes
            ),
            return_exceptions=True,
        )
        failed = [
            f"{n.name} ({r.__class__.__name__})"
            for n, r in zip(nodes, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            raise RuntimeError(f"Redis shards do not take publishes: {', '.join(failed)}")

    def _probe(self, node: ClusterNode) -> str:
        """A channel name whose slot ``node`` serves (found by trying tags)."""
        for n in range(16384 * 4):
            name = f"{self._prefix}ready:{{{n}}}"
            if self._owner_of_name(name) == node.name:
                return name
        raise RuntimeError(f"no slot of node {node.name} found")


class ShardListBackend(BroadcastBackend):
    """Independent Redis servers (``redis://a,redis://b``), a channel on the shard of
    its hash slot (:func:`shard_of`). Each shard is a :class:`RedisPubSubBackend` of
    its own: it reconnects on its own and marks gaps only on its own channels, so a
    shard that restarts does not disturb the others' subscribers."""

    publish_command = "PUBLISH"

    def __init__(self, urls: list[str], *, prefix: str, max_backoff: float = 5.0) -> None:
        self.urls = urls
        self.shards = [RedisPubSubBackend(u, prefix=prefix, max_backoff=max_backoff) for u in urls]
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._pumps: list[asyncio.Task[None]] = []

    def pubsub_channel(self, channel: str) -> str:
        return self.shards[0].pubsub_channel(channel)  # the same name on every shard

    def of(self, channel: str) -> RedisPubSubBackend:
        return self.shards[shard_of(channel, len(self.shards))]

    @property
    def connected(self) -> bool:
        return all(s.connected for s in self.shards)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.shards)

    async def connect(self) -> None:
        for shard in self.shards:
            await shard.connect()
            self._pumps.append(asyncio.create_task(self._pump(shard), name="redis-shard-pump"))

    async def _pump(self, shard: RedisPubSubBackend) -> None:
        while True:
            self._events.put_nowait(await shard.next_published())

    async def disconnect(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for pump in self._pumps:
            with suppress(asyncio.CancelledError):
                await pump
        for shard in self.shards:
            await shard.disconnect()

    async def subscribe(self, channel: str) -> None:
        await self.of(channel).subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.of(channel).unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self.of(channel).publish(channel, message)

    async def next_published(self) -> Event:
        return await self._events.get()

    async def check(self) -> None:
        """Raise naming every shard that is down (by position and host, never with
        its password)."""
        results = await asyncio.gather(
            *(asyncio.wait_for(s.check(), PROBE_SECONDS) for s in self.shards),
            return_exceptions=True,
        )
        failed = [
            f"shard {i} {urlsplit(u).hostname}:{urlsplit(u).port} ({r.__class__.__name__})"
            for i, (u, r) in enumerate(zip(self.urls, results, strict=True))
            if isinstance(r, BaseException)
        ]
        if failed:
            raise RuntimeError(f"Redis shards down: {', '.join(failed)}")


AnyBackend = RedisPubSubBackend | ShardedPubSubBackend | ShardListBackend


def pubsub_backend(url: str, *, prefix: str, max_backoff: float = 5.0) -> AnyBackend:
    """Sharded Pub/Sub on a Redis Cluster, one classic backend per shard of a shard
    list, classic Pub/Sub on one Redis."""
    target = parse_redis_url(url)
    if target.cluster:
        return ShardedPubSubBackend(url, prefix=prefix, max_backoff=max_backoff)
    if len(target.shards) > 1:
        return ShardListBackend(list(target.shards), prefix=prefix, max_backoff=max_backoff)
    return RedisPubSubBackend(url, prefix=prefix, max_backoff=max_backoff)
