"""Private notifications, to one user or to everyone holding a role."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

import strawberry

from db.alert_models import Notification as NotificationRow
from schema.alerts import aware
from schema.context import Context
from schema.directory import User, load_user


@strawberry.input(description="Exactly one of `userId` or `channel` (a role channel).")
class NotifyInput:
    title: str = strawberry.field(
        description="One line, 1 to 200 characters once trimmed (else BAD_INPUT)."
    )
    body: str = strawberry.field(
        description="Plain text, 1 to 10,000 characters once trimmed (else BAD_INPUT)."
    )
    user_id: strawberry.ID | None = strawberry.field(
        default=None, description="One person of your institution (their channel user:{id})."
    )
    channel: str | None = strawberry.field(
        default=None,
        description=(
            "A role channel, `institution:{inst}:role:{admin|teacher|student}`: everyone "
            "holding that role now gets it."
        ),
    )


async def _sender(root: Notification, info: strawberry.Info[Context, None]) -> User | None:
    return await load_user(info, root.sender_id)


@strawberry.type(description="A private notification, with your own read state.")
class Notification:
    id: strawberry.ID = strawberry.field(
        description="The same for every recipient; newer notifications have larger ids."
    )
    channel: str = strawberry.field(description="Where it was addressed: user:{u} or a role.")
    sender_id: strawberry.ID = strawberry.field(description="The user id of who sent it.")
    sender: User | None = strawberry.field(
        resolver=_sender,
        description=(
            "Who sent it, from the directory; null if the directory does not know them "
            "(e.g. an integration's token)."
        ),
    )
    title: str = strawberry.field(description="One line, at most 200 characters.")
    body: str = strawberry.field(description="Plain text, at most 10,000 characters.")
    created_at: datetime = strawberry.field(description="When it was sent (UTC).")
    read_at: datetime | None = strawberry.field(
        description="When you marked it read; always null on a live channel event."
    )

    @classmethod
    def from_row(cls, row: NotificationRow, read_at: datetime | None = None) -> Self:
        return cls(
            id=strawberry.ID(str(row.id)),
            channel=row.channel,
            sender_id=strawberry.ID(row.sender_id),
            title=row.title,
            body=row.body,
            created_at=aware(row.created_at),
            read_at=aware(read_at) if read_at else None,
        )

    def to_message(self) -> dict[str, Any]:
        """What travels in an envelope's ``data.notification``."""
        return {
            "id": str(self.id),
            "channel": self.channel,
            "senderId": str(self.sender_id),
            "title": self.title,
            "body": self.body,
            "createdAt": self.created_at.isoformat(),
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Self:
        return cls(
            id=strawberry.ID(data["id"]),
            channel=data["channel"],
            sender_id=strawberry.ID(data["senderId"]),
            title=data["title"],
            body=data["body"],
            created_at=datetime.fromisoformat(data["createdAt"]),
            read_at=None,
        )


@strawberry.type(description="What notify stored and for how many people.")
class NotifyResult:
    notification: Notification = strawberry.field(description="The stored notification.")
    recipients: int = strawberry.field(description="People it was stored for.")


async def _unread_count(root: object, info: strawberry.Info[Context, None]) -> int:
    return await info.context.loaders.unread.load(info.context.require_viewer().user_id)


@strawberry.type(description="A page of your notifications, newest first.")
class NotificationPage:
    rows: list[Notification] = strawberry.field(
        description="At most `first` notifications, newest first."
    )
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next (older) page; null on the last page."
    )
    unread_count: int = strawberry.field(
        resolver=_unread_count,
        description="How many of all your notifications are unread (not only this page's).",
    )


@strawberry.type(description="What markNotificationsRead changed.")
class MarkReadPayload:
    marked: int = strawberry.field(
        description="How many of the given notifications were unread and are now read."
    )
    notifications: list[Notification] = strawberry.field(
        description=(
            "The given notifications that are yours, newest first, with their `readAt` "
            "now set: a normalized client cache updates the objects it holds from these."
        )
    )
    unread_count: int = strawberry.field(
        resolver=_unread_count, description="How many of your notifications are unread now."
    )
