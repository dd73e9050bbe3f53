"""Presence over the last hour: one sample per interval (``streams/presence_history.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from streams.presence_history import Series


@strawberry.type(description="How many were online at one sample of presence.")
class PresenceSample:
    at: datetime = strawberry.field(
        description="Start of the sampling interval (a minute by default; UTC). The sample "
        "was taken within the interval's first seconds."
    )
    online: int | None = strawberry.field(
        description="Distinct users present then; null when no sample was taken in the "
        "interval (no server running, or the store unreachable): unknown, not zero."
    )


def samples_of(series: Series) -> list[PresenceSample]:
    """One entry per interval of ``series``, oldest first, gaps as null."""
    return [
        PresenceSample(
            at=datetime.fromtimestamp(slot * series.interval, UTC),
            online=series.counts.get(slot),
        )
        for slot in range(series.first, series.last + 1)
    ]
