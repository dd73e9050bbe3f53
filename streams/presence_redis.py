"""Cluster presence in Redis: heartbeats, expiry, and one event stream for all processes.

Every process refreshes the expiry of its own connections every ``timeout / 3``
seconds and runs a janitor every ``timeout / 4`` seconds that removes connections
whose expiry passed (whoever's they were) and emits their LEAVE. When a process dies
(kill -9), its connections stop being refreshed, so their members leave within
``timeout + timeout / 4`` seconds. The scripts (``streams/presence_lua.py``) make each
removal and its event one atomic step, so concurrent janitors never emit twice.

Events travel on their own Redis Pub/Sub topic (``{prefix}:presence:ch:events``),
never on a channel's bus, so they take no offsets from the channel's messages. The
topic is read by our :class:`RedisPubSubBackend`, which reconnects on its own; after
a reconnect every watcher gets a resync (re-read the snapshot), since events may have
been missed. A process that was paused longer than the timeout finds its connections
expired at the next heartbeat and joins them again.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import structlog
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams import presence_lua as lua
from streams.presence import Census, Member, Presence, PresenceEvent, Snapshot, Status
from streams.redis_backend import GAP
from streams.redis_client import every, is_cluster, resilient_client, sharded, state_url
from streams.redis_sharded import pubsub_backend
from streams.tasks import loud

log = structlog.get_logger(__name__)

TOPIC = "events"
STATUS_TTL_SECONDS = 86_400
EXPIRE_BATCH = 500
# Logged by a periodic job that could not reach Redis; expiry catches up when it is back.
UNAVAILABLE = "presence.redis_unavailable"


@dataclass(frozen=True, slots=True)
class _Local:
    channel: str
    institution: str
    member_json: str


class RedisPresence(Presence):
    kind = "redis"

    def __init__(self, url: str, *, prefix: str, timeout_seconds: float, queue_size: int) -> None:
        super().__init__(queue_size=queue_size)
        url = state_url(url)  # presence is deployment-wide state: one Redis or cluster
        self._client = resilient_client(url)
        self._base = f"{prefix}:{{presence}}"
        cluster = is_cluster(url)
        # On a cluster the event topic carries the presence keys' hash tag, so the
        # scripts can SPUBLISH it in the keys' slot (one shard holds all presence).
        self._backend = pubsub_backend(url, prefix=self._base if cluster else f"{prefix}:presence")
        self._topic = self._backend.pubsub_channel(TOPIC)
        self._timeout_ms = int(timeout_seconds * 1000)
        self._timeout = timeout_seconds
        self._process = secrets.token_hex(6)
        self._next = 0
        self._local: dict[str, _Local] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(sharded(getattr(lua, name), cluster))
            for name in ("JOIN", "LEAVE", "EXPIRE", "HEARTBEAT", "STATUS", "SNAPSHOT")
        }

    async def _run(self, name: str, *args: str | int) -> Any:
        # The base as KEYS[1]: a cluster client routes the script to its slot.
        return await self._scripts[name](keys=[self._base], args=[self._base, self._topic, *args])

    async def start(self) -> None:
        await self._backend.connect()
        await self._backend.subscribe(TOPIC)
        self._tasks = [
            asyncio.create_task(self._read_events(), name="presence-events"),
            asyncio.create_task(
                every(self._timeout / 3, self._heartbeat, UNAVAILABLE),
                name="presence-heartbeat",
            ),
            asyncio.create_task(
                every(self._timeout / 4, self.expire, UNAVAILABLE),
                name="presence-janitor",
            ),
        ]
        for task in self._tasks:
            task.add_done_callback(loud("presence.task_died"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        # Leave at once on a graceful stop, rather than after the timeout.
        for connection in list(self._local):
            try:
                await self.leave(connection)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("presence.leave_on_close_failed", error=repr(exc))
                break  # the rest expire on their own
        await self._backend.disconnect()
        await self._client.aclose()

    async def join(self, channel: str, institution: str, member: Member) -> str:
        self._next += 1
        connection = f"{self._process}:{self._next}"
        local = _Local(channel, institution, json.dumps(member.to_wire()))
        self._local[connection] = local
        try:
            await self._join(connection, local, member.user_id)
        except BaseException:
            self._local.pop(connection, None)
            raise
        return connection

    async def _join(self, connection: str, local: _Local, user_id: str) -> None:
        await self._run(
            "JOIN",
            connection,
            local.channel,
            user_id,
            local.institution,
            local.member_json,
            self._timeout_ms,
        )

    async def leave(self, connection: str) -> None:
        if self._local.pop(connection, None) is not None:
            await self._run("LEAVE", connection)

    async def snapshot(self, channel: str) -> Snapshot:
        raw: list[Any] = await self._run("SNAPSHOT", channel)
        members = sorted(
            (Member.from_wire(json.loads(v)) for v in raw[1:]), key=lambda m: m.user_id
        )
        return Snapshot(channel, members, int(raw[0]))

    async def set_status(self, user_id: str, status: Status, message: str | None) -> int:
        count = await self._run("STATUS", user_id, status.value, message or "", STATUS_TTL_SECONDS)
        return int(count)

    async def online(self, institution: str, user_ids: Sequence[str]) -> set[str]:
        if not user_ids:
            return set()
        counts = await self._client.hmget(f"{self._base}:inst:{institution}", list(user_ids))
        return {u for u, c in zip(user_ids, counts, strict=True) if c and int(c) > 0}

    async def online_count(self, institution: str) -> int:
        return int(await self._client.hlen(f"{self._base}:inst:{institution}"))

    async def census(self) -> Census:
        """From the connections' metadata (one HSCAN pass): a member is a user with a
        connection on the channel, as in ``B:ch:{channel}``."""
        channels: dict[str, set[str]] = {}
        institutions: dict[str, set[str]] = {}
        async for _, raw in self._client.hscan_iter(f"{self._base}:meta", count=1000):
            try:
                meta = json.loads(raw)
                channel, user, institution = str(meta["c"]), str(meta["u"]), str(meta["i"])
            except (ValueError, KeyError, TypeError):
                continue
            channels.setdefault(channel, set()).add(user)
            institutions.setdefault(institution, set()).add(user)
        return Census(
            {c: len(u) for c, u in channels.items()},
            {i: len(u) for i, u in institutions.items()},
        )

    async def expire(self) -> None:
        """Remove expired connections of any process; emits their LEAVEs once."""
        while True:
            seen, left = await self._run("EXPIRE", EXPIRE_BATCH)
            if left:
                log.info("presence.expired", connections=seen, members_left=left)
            if seen < EXPIRE_BATCH:
                return

    async def _heartbeat(self) -> None:
        if not self._local:
            return
        missing: list[str] = await self._run("HEARTBEAT", self._timeout_ms, *self._local)
        for connection in missing:
            # Expired while this process was paused or cut off: be present again.
            local = self._local.get(connection)
            if local is not None:
                log.warning("presence.rejoin", connection=connection)
                user_id = json.loads(local.member_json)["userId"]
                await self._join(connection, local, user_id)

    async def _read_events(self) -> None:
        while True:
            event = await self._backend.next_published()
            if event.message == GAP:
                self._resync_all()
                continue
            try:
                self._dispatch(PresenceEvent.from_wire(json.loads(event.message)))
            except (ValueError, KeyError, TypeError):
                log.error("presence.bad_event", message=str(event.message)[:200])
