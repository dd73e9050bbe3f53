"""Embedded-mode presence: one process, so its memory is the whole truth.

Same semantics as the Redis presence (see :mod:`streams.presence`); there is no
expiry because connections cannot outlive the process that holds them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from streams.presence import (
    Census,
    EventType,
    Member,
    Presence,
    PresenceEvent,
    Snapshot,
    Status,
)


@dataclass
class _MemoryConnection:
    channel: str
    institution: str
    user_id: str


@dataclass
class _MemoryChannel:
    members: dict[str, Member] = field(default_factory=dict)
    version: int = 0


class MemoryPresence(Presence):
    """Embedded mode: one process, so its memory is the whole truth."""

    kind = "memory"

    def __init__(self, *, queue_size: int) -> None:
        super().__init__(queue_size=queue_size)
        self._connections: dict[str, _MemoryConnection] = {}
        self._channels: dict[str, _MemoryChannel] = {}
        self._status: dict[str, tuple[Status, str | None]] = {}
        self._next = 0

    async def start(self) -> None:
        """Nothing to open: the state is this object."""

    async def close(self) -> None:
        """Nothing to release; local watchers end with their subscriptions."""

    async def join(self, channel: str, institution: str, member: Member) -> str:
        self._next += 1
        connection = f"m{self._next}"
        self._connections[connection] = _MemoryConnection(channel, institution, member.user_id)
        state = self._channels.setdefault(channel, _MemoryChannel())
        current = state.members.get(member.user_id)
        if current is not None:
            state.members[member.user_id] = replace(current, connections=current.connections + 1)
            return connection
        status, message = self._status.get(member.user_id, (Status.ONLINE, None))
        joined = replace(
            member,
            status=status,
            message=message,
            connections=1,
            since=int(time.time()),
        )
        state.members[member.user_id] = joined
        self._emit(channel, state, EventType.JOIN, joined)
        return connection

    async def leave(self, connection: str) -> None:
        conn = self._connections.pop(connection, None)
        if conn is None:
            return
        state = self._channels[conn.channel]
        current = state.members[conn.user_id]
        if current.connections > 1:
            state.members[conn.user_id] = replace(current, connections=current.connections - 1)
            return
        del state.members[conn.user_id]
        self._emit(conn.channel, state, EventType.LEAVE, replace(current, connections=0))
        if not state.members and conn.channel not in self._watchers:
            del self._channels[conn.channel]

    async def snapshot(self, channel: str) -> Snapshot:
        state = self._channels.get(channel) or _MemoryChannel()
        return Snapshot(channel, sorted(state.members.values(), key=_by_user), state.version)

    async def set_status(self, user_id: str, status: Status, message: str | None) -> int:
        self._status[user_id] = (status, message)
        count = 0
        for channel, state in self._channels.items():
            current = state.members.get(user_id)
            if current is not None:
                updated = replace(current, status=status, message=message)
                state.members[user_id] = updated
                self._emit(channel, state, EventType.STATUS, updated)
                count += 1
        return count

    async def online(self, institution: str, user_ids: Sequence[str]) -> set[str]:
        wanted = set(user_ids)
        return {
            c.user_id
            for c in self._connections.values()
            if c.institution == institution and c.user_id in wanted
        }

    async def online_count(self, institution: str) -> int:
        return len({c.user_id for c in self._connections.values() if c.institution == institution})

    async def census(self) -> Census:
        channels = {name: len(c.members) for name, c in self._channels.items() if c.members}
        users: dict[str, set[str]] = {}
        for conn in self._connections.values():
            users.setdefault(conn.institution, set()).add(conn.user_id)
        return Census(channels, {inst: len(ids) for inst, ids in users.items()})

    def _emit(self, channel: str, state: _MemoryChannel, type: EventType, member: Member) -> None:
        state.version += 1
        self._dispatch(PresenceEvent(channel, type, member, len(state.members), state.version))


def _by_user(member: Member) -> str:
    return member.user_id
