"""Private notifications, to one user or to everyone holding a role."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

import strawberry

from db.alert_models import Notification as NotificationRow
from schema.alerts import aware


@strawberry.input(description="Exactly one of `userId` or `channel` (a role channel).")
class NotifyInput:
    title: str
    body: str
    user_id: strawberry.ID | None = None
    channel: str | None = strawberry.field(
        default=None, description="institution:{inst}:role:{admin|teacher|student}"
    )


@strawberry.type
class Notification:
    id: strawberry.ID
    channel: str = strawberry.field(description="Where it was addressed: user:{u} or a role.")
    sender_id: strawberry.ID
    title: str
    body: str
    created_at: datetime
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


@strawberry.type
class NotifyResult:
    notification: Notification
    recipients: int = strawberry.field(description="People it was stored for.")
