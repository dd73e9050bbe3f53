"""The audit log as admins read it: rows of their institution, a page at a time."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self, cast

import strawberry
from strawberry.scalars import JSON

from db.models import AuditEntry as AuditRow
from schema import cursors
from schema.alerts import aware
from schema.enums import graphql_enum

_CURSOR_PREFIX = "audit"


@graphql_enum(
    "How an audited request ended.",
    OK="It was done.",
    DENIED="Refused by the access rules (FORBIDDEN).",
    NOT_FOUND="Refused as missing, or another institution's (NOT_FOUND).",
    FAILED="Authentication failed.",
    LIMITED="Refused by a rate or connection limit (RATE_LIMITED).",
)
class AuditOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    NOT_FOUND = "not_found"
    FAILED = "failed"
    LIMITED = "limited"


@strawberry.input(description="Conditions on audit rows; all optional, combined with AND.")
class AuditFilter:
    action: str | None = strawberry.field(
        default=None,
        description="Only this action, e.g. publishAnnouncement, publish, connect, authenticate.",
    )
    outcome: AuditOutcome | None = strawberry.field(
        default=None, description="Only rows that ended this way."
    )
    actor: strawberry.ID | None = strawberry.field(
        default=None, description="Only rows of this user id."
    )
    since: datetime | None = strawberry.field(
        default=None, description="Only rows at or after this instant (inclusive)."
    )
    until: datetime | None = strawberry.field(
        default=None, description="Only rows before this instant (exclusive)."
    )


@strawberry.type(description="One audit row: who, from where, did what to what, and how it went.")
class AuditEntry:
    id: strawberry.ID = strawberry.field(description="Grows with every row appended.")
    at: datetime = strawberry.field(description="When it happened (UTC).")
    actor_id: strawberry.ID | None = strawberry.field(
        description="The verified user; null when nobody was authenticated."
    )
    actor_role: str | None = strawberry.field(
        description="The actor's token role (admin, teacher, ...); null without an actor."
    )
    institution_id: strawberry.ID | None = strawberry.field(
        description="The actor's institution (always yours here)."
    )
    action: str = strawberry.field(
        description="What was attempted: a mutation or query name, publish, connect, ..."
    )
    target: str | None = strawberry.field(
        description="What it was attempted on, e.g. a channel or `alert:{id}`; null if nothing."
    )
    outcome: AuditOutcome = strawberry.field(description="How it ended.")
    client_ip: str | None = strawberry.field(
        description="The client's address (through trusted proxies); null if unknown."
    )
    user_agent: str | None = strawberry.field(
        description="The client's User-Agent header, cut to 256 characters; null if none."
    )
    request_id: str | None = strawberry.field(
        description="The same in every row of one HTTP request or WebSocket connection "
        "(HTTP responses carry it as X-Request-Id)."
    )
    details: JSON = strawberry.field(description="What else the row records (a JSON object).")

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


@strawberry.type(description="A page of the audit log, newest first.")
class AuditLogPage:
    rows: list[AuditEntry] = strawberry.field(description="Newest first.")
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next (older) page; null on the last page."
    )


def encode_cursor(row_id: int) -> str:
    """Opaque to clients: they pass it back, they do not compute it."""
    return cursors.encode_cursor(_CURSOR_PREFIX, row_id)


def decode_cursor(cursor: str) -> int | None:
    """The row id in a cursor, or None if it is not one of ours."""
    return cursors.decode_cursor(_CURSOR_PREFIX, cursor)
