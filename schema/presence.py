"""Presence types: members of a channel, snapshots and the events that change them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Self

import strawberry

from schema.context import Context
from schema.directory import Role, User, load_user
from schema.enums import graphql_enum
from streams import presence as p
from streams.acl import Role as AclRole

PresenceStatus = graphql_enum(
    "What a present user says about their availability (setStatus).",
    name="PresenceStatus",
    ONLINE="Available (everyone starts here).",
    AWAY="Present but not at the screen.",
    BUSY="Present, do not disturb.",
)(p.Status)


@graphql_enum(
    "What a presence event says happened.",
    SNAPSHOT="Everyone present now (`snapshot`): first, and again after a resync.",
    JOIN="A user's first tab or device joined (`member`).",
    LEAVE="A user's last tab or device left (`member`, with connections 0).",
    STATUS="A user changed their status or message (`member`).",
)
class PresenceEventType(StrEnum):
    SNAPSHOT = "snapshot"
    JOIN = "join"
    LEAVE = "leave"
    STATUS = "status"


async def _member_user(root: PresenceMember, info: strawberry.Info[Context, None]) -> User | None:
    return await load_user(info, root.user_id)


@strawberry.type(description="One user on a channel, however many tabs or devices they use.")
class PresenceMember:
    user_id: strawberry.ID = strawberry.field(description="Their user id.")
    user: User | None = strawberry.field(
        resolver=_member_user,
        description="Them, from the directory; null if it does not know them.",
    )
    display_name: str = strawberry.field(
        description="Their directory name; their user id if the directory does not know them."
    )
    role: str = strawberry.field(
        description="Their token's role as a string (admin, teacher, ...).",
        deprecation_reason="Use `userRole`, the same role as an enum.",
    )
    user_role: Role = strawberry.field(  # type: ignore[valid-type]
        description="Their token's role."
    )
    status: PresenceStatus = strawberry.field(  # type: ignore[valid-type]
        description="What they set with setStatus; ONLINE until they do."
    )
    message: str | None = strawberry.field(
        description="Their status message (at most 200 characters); null if none."
    )
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
            user_role=AclRole(member.role),
            status=member.status,
            message=member.message,
            connections=member.connections,
            since=datetime.fromtimestamp(member.since, UTC),
        )


@strawberry.type(description="Everyone present on a channel right now.")
class PresenceSnapshot:
    channel: str = strawberry.field(description="The channel's canonical name.")
    members: list[PresenceMember] = strawberry.field(description="One per user, by user id.")
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
    type: PresenceEventType = strawberry.field(description="What happened.")
    channel: str = strawberry.field(description="The channel's canonical name.")
    member: PresenceMember | None = strawberry.field(
        description="Who joined, left or changed status; null on SNAPSHOT."
    )
    snapshot: PresenceSnapshot | None = strawberry.field(
        description="Everyone present; set on SNAPSHOT only."
    )
    member_count: int = strawberry.field(description="Distinct users present after this event.")

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
    status: PresenceStatus = strawberry.field(  # type: ignore[valid-type]
        description="Your status now."
    )
    message: str | None = strawberry.field(description="Your status message now; null if none.")
    channels: int = strawberry.field(description="Channels where you are present now.")
