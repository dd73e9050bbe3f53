"""The audit log as admins read it: rows of their institution, a page at a time."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import StrEnum
from typing import Self, cast

import strawberry
from strawberry.scalars import JSON

from db.models import AuditEntry as AuditRow
from schema.alerts import aware

_CURSOR_PREFIX = "audit:"


@strawberry.enum
class AuditOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    NOT_FOUND = "not_found"
    FAILED = "failed"
    LIMITED = "limited"


@strawberry.input(description="Conditions on audit rows; all optional, combined with AND.")
class AuditFilter:
    action: str | None = strawberry.field(
        default=None, description="e.g. publishAnnouncement, publish, connect, authenticate"
    )
    outcome: AuditOutcome | None = None
    actor: strawberry.ID | None = strawberry.field(default=None, description="a user id")
    since: datetime | None = strawberry.field(default=None, description="inclusive")
    until: datetime | None = strawberry.field(default=None, description="exclusive")


@strawberry.type(description="One audit row: who, from where, did what to what, and how it went.")
class AuditEntry:
    id: strawberry.ID
    at: datetime
    actor_id: strawberry.ID | None = strawberry.field(
        description="The verified user; null when nobody was authenticated."
    )
    actor_role: str | None
    institution_id: strawberry.ID | None
    action: str
    target: str | None
    outcome: AuditOutcome
    client_ip: str | None
    user_agent: str | None
    request_id: str | None = strawberry.field(
        description="The same in every row of one HTTP request or WebSocket connection "
        "(HTTP responses carry it as X-Request-Id)."
    )
    details: JSON

    @classmethod
    def from_row(cls, row: AuditRow) -> Self:
        return cls(
            id=strawberry.ID(str(row.id)),
            at=aware(row.at),
            actor_id=strawberry.ID(row.actor_id) if row.actor_id is not None else None,
            actor_role=row.actor_role,
            institution_id=(
                strawberry.ID(row.institution_id) if row.institution_id is not None else None
            ),
            action=row.action,
            target=row.target,
            outcome=AuditOutcome(row.outcome),
            client_ip=row.client_ip,
            user_agent=row.user_agent,
            request_id=row.request_id,
            details=cast(JSON, dict(row.detail)),  # JSON is a NewType over object
        )


@strawberry.type
class AuditLogPage:
    rows: list[AuditEntry] = strawberry.field(description="Newest first.")
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next (older) page; null on the last page."
    )


def encode_cursor(row_id: int) -> str:
    """Opaque to clients: they pass it back, they do not compute it."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    """The row id in a cursor, or None if it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    number = text.removeprefix(_CURSOR_PREFIX)
    if not text.startswith(_CURSOR_PREFIX) or not number.isdigit() or len(number) > 19:
        return None
    return int(number)
