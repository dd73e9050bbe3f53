"""Alerts (emergency broadcasts) and their roll-call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

import strawberry

from db.alert_models import Alert as AlertRow
from db.alert_repo import RollCallEntry
from schema.context import Context
from schema.directory import Role, User, load_user
from schema.enums import graphql_enum
from schema.viewer import VIEWER_DEPENDENT
from streams.acl import Role as AclRole


@graphql_enum(
    "How serious an alert is.",
    INFO="For information; no action needed.",
    WARNING="Be ready to act.",
    CRITICAL="Act now (e.g. a shelter-in-place drill).",
    EMERGENCY="Life safety (e.g. a lockdown): interrupt everything.",
)
class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    EMERGENCY = "emergency"


@graphql_enum(
    "Whether an alert is still in force.",
    OPEN="Raised and not resolved: it can be acknowledged.",
    RESOLVED="Resolved by an admin or whoever raised it: `resolvedAt` is set.",
)
class AlertState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@strawberry.input(description="An alert to raise.")
class RaiseAlertInput:
    institution_id: strawberry.ID = strawberry.field(
        description="Your institution (another one: FORBIDDEN)."
    )
    severity: Severity = strawberry.field(description="How serious it is.")
    title: str = strawberry.field(
        description="One line, 1 to 200 characters once trimmed (else BAD_INPUT)."
    )
    body: str = strawberry.field(
        description="What to do, 1 to 10,000 characters once trimmed (else BAD_INPUT)."
    )
    targets: list[str] | None = strawberry.field(
        default=None,
        description=(
            "Channels whose people are targeted (at most 20; you must be allowed to publish "
            "on each); none means the whole institution (admins and services only)."
        ),
    )


def _role(value: str) -> AclRole | None:
    try:
        return AclRole(value)
    except ValueError:
        return None


async def _person(
    root: RollCallPerson | Acknowledgement, info: strawberry.Info[Context, None]
) -> User | None:
    return await load_user(info, root.user_id)


@strawberry.type(description="One targeted person of an alert.")
class RollCallPerson:
    user_id: strawberry.ID = strawberry.field(description="Their user id.")
    user: User | None = strawberry.field(
        resolver=_person, description="Them, from the directory; null if it no longer has them."
    )
    display_name: str = strawberry.field(
        description="Their directory name; their id if the directory no longer has them."
    )
    role: str = strawberry.field(
        description="Their directory role as a string; empty if the directory no longer has them.",
        deprecation_reason="Use `userRole`, the same role as an enum.",
    )
    user_role: Role | None = strawberry.field(  # type: ignore[valid-type]
        description="Their directory role; null if the directory no longer has them."
    )
    acknowledged_at: datetime | None = strawberry.field(
        description="When they acknowledged (UTC); null: not yet."
    )
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
            user_role=_role(entry.role),
            acknowledged_at=aware(at) if at is not None else None,
            online=online,
        )


@strawberry.type(description="Who of the targeted people acknowledged, and who has not.")
class RollCall:
    targeted_count: int = strawberry.field(
        description="People the alert targeted when it was raised (services are not people)."
    )
    acknowledged_count: int = strawberry.field(description="Of them, who acknowledged.")
    pending_count: int = strawberry.field(description="Of them, who has not yet.")
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


async def _raised_by_user(root: Alert, info: strawberry.Info[Context, None]) -> User | None:
    return await load_user(info, root.raised_by)


async def _resolved_by_user(root: Alert, info: strawberry.Info[Context, None]) -> User | None:
    return await load_user(info, root.resolved_by)


async def _acknowledged_by_me_at(
    root: Alert, info: strawberry.Info[Context, None]
) -> datetime | None:
    viewer = info.context.viewer
    if viewer is None:
        return None
    at = await info.context.loaders.acknowledged.load((int(root.id), viewer.user_id))
    return aware(at) if at is not None else None


@strawberry.type(description="An emergency broadcast to the people of an institution.")
class Alert:
    id: strawberry.ID = strawberry.field(description="The alert's id (a number).")
    institution_id: strawberry.ID = strawberry.field(description="Where it was raised.")
    severity: Severity = strawberry.field(description="How serious it is.")
    title: str = strawberry.field(description="One line.")
    body: str = strawberry.field(description="What to do.")
    targets: list[str] = strawberry.field(
        description="Channels whose people it targets; empty: the whole institution."
    )
    raised_by: strawberry.ID = strawberry.field(
        description="The user id of who raised it.",
        deprecation_reason="Use `raisedById` (the same id) or `raisedByUser`.",
    )
    raised_by_id: strawberry.ID = strawberry.field(description="The user id of who raised it.")
    raised_by_user: User | None = strawberry.field(
        resolver=_raised_by_user,
        description="Who raised it, from the directory; null if it does not know them.",
    )
    created_at: datetime = strawberry.field(description="When it was raised (UTC).")
    state: AlertState = strawberry.field(description="OPEN until someone resolves it.")
    resolved_at: datetime | None = strawberry.field(
        description="When it was resolved (UTC); null while OPEN."
    )
    resolved_by: strawberry.ID | None = strawberry.field(
        description="The user id of who resolved it; null while OPEN.",
        deprecation_reason="Use `resolvedById` (the same id) or `resolvedByUser`.",
    )
    resolved_by_id: strawberry.ID | None = strawberry.field(
        description="The user id of who resolved it; null while OPEN."
    )
    resolved_by_user: User | None = strawberry.field(
        resolver=_resolved_by_user,
        description="Who resolved it, from the directory; null while OPEN or if unknown.",
    )
    acknowledged_by_me_at: datetime | None = strawberry.field(
        resolver=_acknowledged_by_me_at,
        description=(
            "When you acknowledged it (UTC); null if you have not, or it does not target you. "
            "Depends on who asks."
        ),
        metadata=VIEWER_DEPENDENT,
    )
    roll_call: RollCall | None = strawberry.field(
        default=None,
        description=(
            "Who acknowledged and who has not, for admins, services and whoever raised the "
            "alert: set by Query.alert, Query.alertPage, acknowledgeAlert's `alert` and "
            "Subscription.alertRollCall; null otherwise (and on the other subscriptions)."
        ),
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
            raised_by_id=strawberry.ID(row.raised_by),
            created_at=aware(row.created_at),
            state=AlertState.RESOLVED if row.resolved_at else AlertState.OPEN,
            resolved_at=aware(row.resolved_at) if row.resolved_at else None,
            resolved_by=strawberry.ID(row.resolved_by) if row.resolved_by else None,
            resolved_by_id=strawberry.ID(row.resolved_by) if row.resolved_by else None,
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
        resolver = strawberry.ID(data["resolvedBy"]) if data.get("resolvedBy") else None
        return cls(
            id=strawberry.ID(data["id"]),
            institution_id=strawberry.ID(data["institutionId"]),
            severity=Severity(data["severity"]),
            title=data["title"],
            body=data["body"],
            targets=list(data["targets"]),
            raised_by=strawberry.ID(data["raisedBy"]),
            raised_by_id=strawberry.ID(data["raisedBy"]),
            created_at=datetime.fromisoformat(data["createdAt"]),
            state=AlertState.RESOLVED if resolved else AlertState.OPEN,
            resolved_at=datetime.fromisoformat(resolved) if resolved else None,
            resolved_by=resolver,
            resolved_by_id=resolver,
        )


async def _alert(root: Acknowledgement) -> Alert | None:
    return await root.load_alert()


@strawberry.type(description="Your acknowledgement of an alert.")
class Acknowledgement:
    alert_id: strawberry.ID = strawberry.field(description="The alert acknowledged.")
    user_id: strawberry.ID = strawberry.field(description="Your user id.")
    user: User | None = strawberry.field(
        resolver=_person, description="You, from the directory; null if it does not know you."
    )
    acknowledged_at: datetime = strawberry.field(description="When (UTC).")
    alert: Alert | None = strawberry.field(
        resolver=_alert,
        description=(
            "The alert as it is now, as Query.alert gives it (with `acknowledgedByMeAt` set "
            "and, for those who manage it, the updated roll call): select it to update the "
            "alert a client cache holds."
        ),
    )
    load_alert: strawberry.Private[Callable[[], Awaitable[Alert | None]]]
