"""Following alerts: the page of an institution's alerts, and the count-only message
that announces an acknowledgement to the people who manage the alert."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import strawberry

from db.alert_repo import Tally
from schema.alerts import Alert, aware
from schema.enums import graphql_enum

ACKNOWLEDGED = "alert.acknowledged"  # the envelope kind


@graphql_enum(
    "Which alerts a page lists, by `Alert.state`.",
    OPEN="Not resolved yet (the default): what still needs acknowledging.",
    RESOLVED="Resolved ones only.",
    ALL="Open and resolved.",
)
class AlertStateFilter(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    ALL = "all"


@strawberry.type(description="A page of your institution's alerts, newest first.")
class AlertPage:
    rows: list[Alert] = strawberry.field(
        description=(
            "At most `first` alerts, newest first, as Query.alert gives each: with "
            "`rollCall` on those you manage (admins, services, whoever raised it)."
        )
    )
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next (older) page; null on the last page."
    )


def acknowledged_message(tally: Tally) -> dict[str, Any]:
    """What travels in the envelope's ``data`` of kind ``alert.acknowledged``: who
    acknowledged (the one id) and the counts, never the roll-call's names."""
    return {
        "alertId": str(tally.alert.id),
        "userId": tally.user_id,
        "acknowledgedAt": aware(tally.at).isoformat(),
        "acknowledgedCount": tally.acknowledged,
        "pendingCount": tally.pending,
    }
