"""Presence types: members of a channel, snapshots and the events that change them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Self

import strawberry

from streams import presence as p

PresenceStatus = strawberry.enum(p.Status, name="PresenceStatus")


@strawberry.enum
class PresenceEventType(StrEnum):
    SNAPSHOT = "snapshot"
    JOIN = "join"
    LEAVE = "leave"
    STATUS = "status"


@strawberry.type(description="One user on a channel, however many tabs or devices they use.")
class PresenceMember:
    user_id: strawberry.ID
    display_name: str
    role: str
    status: PresenceStatus  # type: ignore[valid-type]
    message: str | None
    connections: int = strawberry.field(
        description="Open presence subscriptions of this user on the channel (0 after LEAVE)."
    )
    since: datetime = strawberry.field(description="When the user's first connection joined.")

    @classmethod
    def from_member(cls, member: p.Member) -> Self:
        return cls(
            user_id=strawberry.ID(member.user_id),
            display_name=member.display_name,
            role=member.role,
            status=member.status,
            message=member.message,
            connections=member.connections,
            since=datetime.fromtimestamp(member.since, UTC),
        )


@strawberry.type(description="Everyone present on a channel right now.")
class PresenceSnapshot:
    channel: str
    members: list[PresenceMember]
    member_count: int = strawberry.field(description="Distinct users.")
    connection_count: int = strawberry.field(description="Their open connections, summed.")

    @classmethod
    def from_snapshot(cls, snapshot: p.Snapshot) -> Self:
        return cls(
            channel=snapshot.channel,
            members=[PresenceMember.from_member(m) for m in snapshot.members],
            member_count=len(snapshot.members),
            connection_count=snapshot.connection_count,
        )


@strawberry.type(
    description=(
        "SNAPSHOT (first, and again after a resync) carries `snapshot`; JOIN, LEAVE and "
        "STATUS carry the `member`. A user's extra tabs emit nothing."
    )
)
class PresenceEvent:
    type: PresenceEventType
    channel: str
    member: PresenceMember | None
    snapshot: PresenceSnapshot | None
    member_count: int

    @classmethod
    def from_snapshot(cls, snapshot: p.Snapshot) -> Self:
        return cls(
            type=PresenceEventType.SNAPSHOT,
            channel=snapshot.channel,
            member=None,
            snapshot=PresenceSnapshot.from_snapshot(snapshot),
            member_count=len(snapshot.members),
        )

    @classmethod
    def from_event(cls, event: p.PresenceEvent) -> Self:
        return cls(
            type=PresenceEventType(event.type.value),
            channel=event.channel,
            member=PresenceMember.from_member(event.member),
            snapshot=None,
            member_count=event.member_count,
        )


@strawberry.type(description="Your status after setStatus.")
class StatusUpdate:
    status: PresenceStatus  # type: ignore[valid-type]
    message: str | None
    channels: int = strawberry.field(description="Channels where you are present now.")
