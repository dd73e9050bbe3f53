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
from schema.directory import User, load_user
from schema.enums import graphql_enum
from schema.notifications import Notification
from schema.scalars import Long
from schema.viewer import VIEWER_DEPENDENT
from streams.envelope import Envelope, Position


@graphql_enum(
    "How prominently to show an announcement.",
    LOW="Informational; no need to interrupt.",
    NORMAL="The default.",
    HIGH="Show prominently.",
    URGENT="Interrupt: show at once, e.g. as a banner.",
)
class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


async def _author(root: Announcement, info: strawberry.Info[Context, None]) -> User | None:
    return await load_user(info, root.author_id)


@strawberry.type(description="A message published on a channel and stored in its history.")
class Announcement:
    id: strawberry.ID = strawberry.field(
        description="Grows with every announcement stored: newer ones have larger ids."
    )
    channel: str = strawberry.field(description="The channel it was published on.")
    author_id: strawberry.ID = strawberry.field(description="The user id of who published it.")
    author: User | None = strawberry.field(
        resolver=_author,
        description=(
            "Who published it, from the directory; null if the directory does not know them "
            "(e.g. an integration's token). On a channel subscription this field makes the "
            "server execute your selection per subscriber (see the README)."
        ),
    )
    title: str = strawberry.field(description="One line, at most 200 characters.")
    body: str = strawberry.field(description="Plain text, at most 10,000 characters.")
    priority: Priority = strawberry.field(description="How prominently to show it.")
    created_at: datetime = strawberry.field(description="When it was stored (UTC).")

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


@strawberry.type(description="A page of a channel's announcements, newest first.")
class AnnouncementPage:
    rows: list[Announcement] = strawberry.field(
        description="At most `first` announcements, newest first."
    )
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next (older) page; null on the last page."
    )


@strawberry.input(description="An announcement to publish.")
class PublishAnnouncementInput:
    channel: str = strawberry.field(
        description="Where to publish, e.g. `institution:northwood:classroom:nw-math-101`."
    )
    title: str = strawberry.field(
        description="One line, 1 to 200 characters once trimmed (else BAD_INPUT)."
    )
    body: str = strawberry.field(
        description="Plain text, 1 to 10,000 characters once trimmed (else BAD_INPUT)."
    )
    priority: Priority = strawberry.field(
        default=Priority.NORMAL, description="How prominently to show it; NORMAL if omitted."
    )


@strawberry.input(description="A position to resume a channel from, as a ChannelEvent gave it.")
class PositionInput:
    offset: Long = strawberry.field(description="The `offset` of the last event you processed.")
    epoch: str = strawberry.field(description="The `epoch` of that event.")


@strawberry.type(description="A position in a channel: resume after `offset` in `epoch`.")
class ChannelPosition:
    offset: Long = strawberry.field(
        description="The offset of the channel's newest message (0: none yet in this epoch)."
    )
    epoch: str = strawberry.field(
        description="Names one continuous history; a new epoch means history was lost."
    )

    @classmethod
    def from_position(cls, position: Position) -> Self:
        return cls(offset=Long(position.offset), epoch=position.epoch)


def _from_me(root: ChannelEvent, info: strawberry.Info[Context, None]) -> bool:
    viewer = info.context.viewer
    return viewer is not None and root.publisher == viewer.user_id


@graphql_enum(
    "What a channel event carries; `ChannelEvent.kind` is the same as a string.",
    ANNOUNCEMENT="An announcement was published (`announcement` is set); kind `announcement`.",
    NOTIFICATION="A private notification (`notification` is set); kind `notification`.",
    ALERT="An alert was raised (`alert` is set); kind `alert`.",
    ALERT_RESOLVED="An alert was resolved (`alert` is set); kind `alert.resolved`.",
    ALERT_ACKNOWLEDGED=(
        "Someone acknowledged an alert (`data`: alertId, userId, acknowledgedAt, "
        "acknowledgedCount, pendingCount); kind `alert.acknowledged`, on the admins' role "
        "channel and the raiser's user channel only."
    ),
    ANALYTICS_ALERT=(
        "An analytics or consumer-lag rule fired (`data`: rule, subject, minute, value, "
        "threshold); kind `analytics.alert`, on system:status and admin channels."
    ),
    RESET=(
        "History could not cover your `since`: refetch, then continue from this event's "
        "position (`recovered` is false); kind `reset`."
    ),
    OTHER="A kind this schema does not name yet: read `kind` and `data`.",
)
class ChannelEventType(StrEnum):
    ANNOUNCEMENT = "announcement"
    NOTIFICATION = "notification"
    ALERT = "alert"
    ALERT_RESOLVED = "alert.resolved"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ANALYTICS_ALERT = "analytics.alert"
    RESET = "reset"
    OTHER = "other"


_EVENT_TYPES = {t.value: t for t in ChannelEventType if t is not ChannelEventType.OTHER}


def event_type(kind: str) -> ChannelEventType:
    """The enum value of an envelope's kind; OTHER for kinds it does not name."""
    return _EVENT_TYPES.get(kind, ChannelEventType.OTHER)


@strawberry.type(description="One message on a channel, in its delivery envelope.")
class ChannelEvent:
    offset: Long = strawberry.field(
        description="Grows by one per message on the channel, within an epoch."
    )
    epoch: str = strawberry.field(
        description="Names one continuous history of the channel; pass it back in `since`."
    )
    channel: str = strawberry.field(description="The channel's canonical name.")
    type: ChannelEventType = strawberry.field(
        description="What the event carries, and so which field below is set."
    )
    kind: str = strawberry.field(
        description="What the event carries, as the envelope's string (`announcement`, "
        "`alert.resolved`, ...).",
        deprecation_reason="Use `type`, the same values as an enum.",
    )
    published_at: datetime = strawberry.field(
        description="When the server published it (UTC); for a reset, when it was sent."
    )
    recovered: bool = strawberry.field(
        description=(
            "False when the server could not replay everything since your position: "
            "refetch (e.g. Query.announcementPage) and continue from this event's position."
        )
    )
    announcement: Announcement | None = strawberry.field(description="Type ANNOUNCEMENT.")
    alert: Alert | None = strawberry.field(
        default=None, description="Types ALERT and ALERT_RESOLVED."
    )
    data: JSON | None = strawberry.field(
        default=None,
        description=(
            "The message's data as published, for kinds without a typed field "
            "(e.g. ANALYTICS_ALERT: rule, subject, minute, value, threshold; "
            "ALERT_ACKNOWLEDGED: alertId, userId, acknowledgedAt, acknowledgedCount, "
            "pendingCount)."
        ),
    )
    notification: Notification | None = strawberry.field(
        default=None, description="Type NOTIFICATION."
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
            type=event_type(envelope.kind),
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
            type=ChannelEventType.RESET,
            kind="reset",
            published_at=datetime.now(UTC),
            recovered=False,
            announcement=None,
        )
