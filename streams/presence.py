"""Presence: who is on a channel right now, with one member per user.

Guarantees of every :class:`Presence` (memory for embedded mode, Redis for a cluster):

* One member per (channel, user). Each open subscription is a *connection* of that
  member; a second tab or device only raises ``connections`` and emits nothing, so
  there are no join/leave storms. ``LEAVE`` is emitted once, when the last connection
  of the user on that channel goes (closed, cancelled, or expired after its process
  died).
* Every change carries a per-channel ``version``. :meth:`Presence.attend` registers
  the watcher *before* joining and reads the snapshot *after*, then drops events the
  snapshot already contains, so a subscriber sees a snapshot and then every later
  change exactly once, in order.
* A watcher that falls behind, or a process that lost the event stream for a while
  (Redis reconnect), gets a :data:`RESYNC` marker instead of silently missing events:
  its owner re-reads the snapshot. Presence never disconnects a client.
* Status (ONLINE, AWAY, BUSY + message) belongs to the user, not the connection: it
  applies on every channel where the user is present and to later joins.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    ONLINE = "online"
    AWAY = "away"
    BUSY = "busy"


class EventType(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Member:
    """One user on one channel; ``connections`` counts their open subscriptions there."""

    user_id: str
    display_name: str
    role: str
    status: Status = Status.ONLINE
    message: str | None = None
    connections: int = 0
    since: int = 0  # unix seconds of the member's first connection

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "userId": self.user_id,
            "displayName": self.display_name,
            "role": self.role,
            "status": self.status.value,
            "connections": self.connections,
            "since": self.since,
        }
        if self.message:
            wire["message"] = self.message
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Member:
        message = data.get("message")
        return cls(
            user_id=str(data["userId"]),
            display_name=str(data["displayName"]),
            role=str(data["role"]),
            status=Status(data.get("status", "online")),
            message=message if isinstance(message, str) and message else None,
            connections=int(data.get("connections", 0)),
            since=int(data.get("since", 0)),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    channel: str
    members: list[Member]
    version: int

    @property
    def connection_count(self) -> int:
        return sum(m.connections for m in self.members)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    channel: str
    type: EventType
    member: Member
    member_count: int
    version: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PresenceEvent:
        return cls(
            channel=str(data["channel"]),
            type=EventType(data["type"]),
            member=Member.from_wire(data["member"]),
            member_count=int(data["count"]),
            version=int(data["version"]),
        )


@dataclass(frozen=True, slots=True)
class Census:
    """How many are present now: members per presence key (channels with any), and
    distinct users per institution (its ``online_count``)."""

    channels: dict[str, int]
    institutions: dict[str, int]


class Resync:
    """Events may have been missed: re-read the snapshot."""


RESYNC = Resync()


class Watch:
    """One subscriber's bounded queue of a channel's presence events."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[PresenceEvent | Resync] = asyncio.Queue(maxsize)
        self._after = -1
        self._stale = False

    def after(self, version: int) -> None:
        """Drop events already reflected in a snapshot of ``version``."""
        self._after = version
        self._stale = False

    def offer(self, item: PresenceEvent | Resync) -> None:
        if self._stale:
            return
        if isinstance(item, Resync):
            self._resync()
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._resync()

    def _resync(self) -> None:
        # Dropping what is queued is fine: the snapshot that follows supersedes it.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(RESYNC)
        self._stale = True

    def __aiter__(self) -> AsyncIterator[PresenceEvent | Resync]:
        return self

    async def __anext__(self) -> PresenceEvent | Resync:
        while True:
            item = await self._queue.get()
            if isinstance(item, Resync) or item.version > self._after:
                return item


@dataclass(frozen=True, slots=True)
class Attendance:
    snapshot: Snapshot
    events: Watch


class Presence(ABC):
    """Presence state plus local fan-out of its events to this process's watchers."""

    kind = "abstract"

    def __init__(self, *, queue_size: int) -> None:
        self._queue_size = queue_size
        self._watchers: dict[str, set[Watch]] = {}
        self._listeners: list[Callable[[PresenceEvent], None]] = []

    @abstractmethod
    async def start(self) -> None:
        """Open connections and background tasks."""

    @abstractmethod
    async def close(self) -> None:
        """Leave every local connection and stop background tasks."""

    @abstractmethod
    async def join(self, channel: str, institution: str, member: Member) -> str:
        """Add one connection of ``member``; returns its connection id."""

    @abstractmethod
    async def leave(self, connection: str) -> None:
        """Remove one connection; emits LEAVE if it was the user's last there."""

    @abstractmethod
    async def snapshot(self, channel: str) -> Snapshot: ...

    @abstractmethod
    async def set_status(self, user_id: str, status: Status, message: str | None) -> int:
        """Set the user's status; returns on how many channels they are present."""

    @abstractmethod
    async def online(self, institution: str, user_ids: Sequence[str]) -> set[str]:
        """Which of ``user_ids`` have at least one live presence connection."""

    @abstractmethod
    async def online_count(self, institution: str) -> int:
        """Distinct users of ``institution`` with a live presence connection anywhere."""

    @abstractmethod
    async def census(self) -> Census:
        """Member counts of every channel with members, and every institution's
        online count, read at once (the presence history's sample)."""

    @asynccontextmanager
    async def attend(
        self, channel: str, institution: str, member: Member
    ) -> AsyncIterator[Attendance]:
        """Be present on ``channel`` for the life of the block; see the module doc."""
        watch = Watch(self._queue_size)
        self._watchers.setdefault(channel, set()).add(watch)
        try:
            connection = await self.join(channel, institution, member)
            try:
                snapshot = await self.snapshot(channel)
                watch.after(snapshot.version)
                yield Attendance(snapshot, watch)
            finally:
                # Shielded: a cancelled subscription must still leave.
                await asyncio.shield(self.leave(connection))
        finally:
            watchers = self._watchers.get(channel)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watchers[channel]

    def listen(self, listener: Callable[[PresenceEvent], None]) -> None:
        """Call ``listener`` with every event of every channel this process hears of
        (Redis: every process hears every event; the Pusher webhooks elect one
        sender per event). It runs inside the event loop's dispatch: keep it short."""
        self._listeners.append(listener)

    def _dispatch(self, event: PresenceEvent) -> None:
        for listener in self._listeners:
            listener(event)
        for watch in self._watchers.get(event.channel, ()):
            watch.offer(event)

    def _resync_all(self) -> None:
        for watchers in self._watchers.values():
            for watch in watchers:
                watch.offer(RESYNC)
