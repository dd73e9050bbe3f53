"""Announcements and the envelope events that carry them on channels."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self, cast

import strawberry
from strawberry.scalars import JSON

from db import models
from db.group_commit import StoredAnnouncement
from schema.alerts import Alert
from schema.context import Context
from schema.notifications import Notification
from schema.scalars import Long
from schema.viewer import VIEWER_DEPENDENT
from streams.envelope import Envelope, Position


@strawberry.enum
class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


@strawberry.type
class Announcement:
    id: strawberry.ID
    channel: str
    author_id: strawberry.ID
    title: str
    body: str
    priority: Priority
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.Announcement | StoredAnnouncement) -> Self:
        created = row.created_at
        if created.tzinfo is None:  # SQLite hands back naive datetimes
            created = created.replace(tzinfo=UTC)
        return cls(
            id=strawberry.ID(str(row.id)),
            channel=row.channel,
            author_id=strawberry.ID(row.author_id),
            title=row.title,
            body=row.body,
            priority=Priority(row.priority),
            created_at=created,
        )

    def to_message(self) -> dict[str, Any]:
        """What travels in the envelope's ``data.announcement``."""
        return {
            "id": str(self.id),
            "channel": self.channel,
            "authorId": str(self.author_id),
            "title": self.title,
            "body": self.body,
            "priority": self.priority.value,
            "createdAt": self.created_at.isoformat(),
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Self:
        return cls(
            id=strawberry.ID(data["id"]),
            channel=data["channel"],
            author_id=strawberry.ID(data["authorId"]),
            title=data["title"],
            body=data["body"],
            priority=Priority(data["priority"]),
            created_at=datetime.fromisoformat(data["createdAt"]),
        )


@strawberry.input
class PublishAnnouncementInput:
    channel: str
    title: str
    body: str
    priority: Priority = Priority.NORMAL


@strawberry.input(description="A position to resume a channel from.")
class PositionInput:
    offset: Long
    epoch: str


@strawberry.type(description="A position in a channel: resume after `offset` in `epoch`.")
class ChannelPosition:
    offset: Long
    epoch: str

    @classmethod
    def from_position(cls, position: Position) -> Self:
        return cls(offset=Long(position.offset), epoch=position.epoch)


def _from_me(root: ChannelEvent, info: strawberry.Info[Context, None]) -> bool:
    viewer = info.context.viewer
    return viewer is not None and root.publisher == viewer.user_id


@strawberry.type(description="One message on a channel, in its delivery envelope.")
class ChannelEvent:
    offset: Long
    epoch: str
    channel: str
    kind: str
    published_at: datetime
    recovered: bool = strawberry.field(
        description=(
            "False when the server could not replay everything since your position: "
            "refetch (e.g. Query.announcements) and continue from this event's position."
        )
    )
    announcement: Announcement | None
    alert: Alert | None = strawberry.field(default=None, description="Kinds alert*.")
    data: JSON | None = strawberry.field(
        default=None,
        description=(
            "The message's data as published, for kinds without a typed field "
            "(e.g. analytics.alert: rule, subject, minute, value, threshold)."
        ),
    )
    notification: Notification | None = strawberry.field(
        default=None, description="Kind notification."
    )
    publisher: strawberry.Private[str | None] = None

    from_me: bool = strawberry.field(
        resolver=_from_me,
        description="True when you published this message (depends on the viewer).",
        metadata=VIEWER_DEPENDENT,
    )

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Self:
        data = envelope.data.get("announcement")
        alert = envelope.data.get("alert")
        note = envelope.data.get("notification")
        return cls(
            publisher=data.get("authorId") if isinstance(data, dict) else None,
            offset=Long(envelope.offset),
            epoch=envelope.epoch,
            channel=envelope.channel,
            kind=envelope.kind,
            published_at=envelope.published_at,
            recovered=True,
            announcement=Announcement.from_message(data) if isinstance(data, dict) else None,
            # Analytics rule alerts (kind analytics.alert) have another shape: no id.
            alert=Alert.from_message(alert) if isinstance(alert, dict) and "id" in alert else None,
            notification=Notification.from_message(note) if isinstance(note, dict) else None,
            data=cast(JSON, dict(envelope.data)),  # JSON is a NewType over object
        )

    @classmethod
    def reset(cls, channel: str, position: Position) -> Self:
        return cls(
            offset=Long(position.offset),
            epoch=position.epoch,
            channel=channel,
            kind="reset",
            published_at=datetime.now(UTC),
            recovered=False,
            announcement=None,
        )
