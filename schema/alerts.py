"""Alerts (emergency broadcasts) and their roll-call."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

import strawberry

from db.alert_models import Alert as AlertRow
from db.alert_repo import RollCallEntry


@strawberry.enum
class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    EMERGENCY = "emergency"


@strawberry.enum
class AlertState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@strawberry.input
class RaiseAlertInput:
    institution_id: strawberry.ID
    severity: Severity
    title: str
    body: str
    targets: list[str] | None = strawberry.field(
        default=None,
        description="Channels whose people are targeted; none means the whole institution.",
    )


@strawberry.type
class RollCallPerson:
    user_id: strawberry.ID
    display_name: str
    role: str
    acknowledged_at: datetime | None
    online: bool = strawberry.field(
        description="Holding a presence subscription on any channel right now."
    )

    @classmethod
    def from_entry(cls, entry: RollCallEntry, online: bool) -> Self:
        at = entry.acknowledged_at
        return cls(
            user_id=strawberry.ID(entry.user_id),
            display_name=entry.display_name,
            role=entry.role,
            acknowledged_at=aware(at) if at is not None else None,
            online=online,
        )


@strawberry.type(description="Who of the targeted people acknowledged, and who has not.")
class RollCall:
    targeted_count: int
    acknowledged_count: int
    pending_count: int
    pending_online_count: int = strawberry.field(
        description="Not acknowledged yet but online now: reachable, so chase them first."
    )
    acknowledged: list[RollCallPerson] = strawberry.field(
        description="In order of acknowledgement."
    )
    pending: list[RollCallPerson] = strawberry.field(description="By user id.")

    @classmethod
    def build(cls, entries: list[RollCallEntry], online: set[str]) -> Self:
        done = sorted(
            (e for e in entries if e.acknowledged_at is not None),
            key=lambda e: (aware(e.acknowledged_at or datetime.min), e.user_id),
        )
        pending = [e for e in entries if e.acknowledged_at is None]
        return cls(
            targeted_count=len(entries),
            acknowledged_count=len(done),
            pending_count=len(pending),
            pending_online_count=sum(1 for e in pending if e.user_id in online),
            acknowledged=[RollCallPerson.from_entry(e, e.user_id in online) for e in done],
            pending=[RollCallPerson.from_entry(e, e.user_id in online) for e in pending],
        )


@strawberry.type
class Alert:
    id: strawberry.ID
    institution_id: strawberry.ID
    severity: Severity
    title: str
    body: str
    targets: list[str]
    raised_by: strawberry.ID
    created_at: datetime
    state: AlertState
    resolved_at: datetime | None
    resolved_by: strawberry.ID | None
    roll_call: RollCall | None = strawberry.field(
        default=None,
        description="Query.alert only, for admins, services and whoever raised the alert.",
    )

    @classmethod
    def from_row(cls, row: AlertRow) -> Self:
        return cls(
            id=strawberry.ID(str(row.id)),
            institution_id=strawberry.ID(row.institution_id),
            severity=Severity(row.severity),
            title=row.title,
            body=row.body,
            targets=list(row.targets),
            raised_by=strawberry.ID(row.raised_by),
            created_at=aware(row.created_at),
            state=AlertState.RESOLVED if row.resolved_at else AlertState.OPEN,
            resolved_at=aware(row.resolved_at) if row.resolved_at else None,
            resolved_by=strawberry.ID(row.resolved_by) if row.resolved_by else None,
        )

    def to_message(self) -> dict[str, Any]:
        """What travels in an envelope's ``data.alert``."""
        return {
            "id": str(self.id),
            "institutionId": str(self.institution_id),
            "severity": self.severity.value,
            "title": self.title,
            "body": self.body,
            "targets": self.targets,
            "raisedBy": str(self.raised_by),
            "createdAt": self.created_at.isoformat(),
            "resolvedAt": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolvedBy": str(self.resolved_by) if self.resolved_by else None,
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Self:
        resolved = data.get("resolvedAt")
        return cls(
            id=strawberry.ID(data["id"]),
            institution_id=strawberry.ID(data["institutionId"]),
            severity=Severity(data["severity"]),
            title=data["title"],
            body=data["body"],
            targets=list(data["targets"]),
            raised_by=strawberry.ID(data["raisedBy"]),
            created_at=datetime.fromisoformat(data["createdAt"]),
            state=AlertState.RESOLVED if resolved else AlertState.OPEN,
            resolved_at=datetime.fromisoformat(resolved) if resolved else None,
            resolved_by=strawberry.ID(data["resolvedBy"]) if data.get("resolvedBy") else None,
        )


@strawberry.type
class Acknowledgement:
    alert_id: strawberry.ID
    user_id: strawberry.ID
    acknowledged_at: datetime
