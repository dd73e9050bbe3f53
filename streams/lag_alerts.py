"""Alert rules on the consumer group's lag, checked by every server process.

A stalled pipeline cannot raise its own alert (the errors/min and failed-login
rules run inside the consumer's batch transaction), so these run on the lag
snapshots a server reads every ``EDUMATRIX_CONSUMER_LAG_INTERVAL_SECONDS``
(``streams/kafka_lag.py``):

* ``consumer_lag``: the group's total lag is over ``EDUMATRIX_ALERT_CONSUMER_LAG``.
* ``consumer_stall``: some partition has had lag > 0 and no applied offset move
  for ``EDUMATRIX_ALERT_CONSUMER_STALL_SECONDS`` (watched by this process, so a
  burst that is being consumed is not a stall).

Like the other rules, an alert is recorded once in ``alerts_fired`` (platform
institution, subject the group) and published as kind ``analytics.alert`` by the
process that recorded it, here on ``system:status``, the channel every
institution's admins and services may follow. The once is per episode: a stall's
bucket is the group's last progress (the newest ``updated_at`` in Postgres, the
same for every server); a lag alert's is the minute one process first saw it, so
it is recorded only if no server recorded one for the group within
:data:`LAG_QUIET` (checked atomically across processes); and each process raises
a rule again only after its condition cleared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from db.analytics_write import Alert, record_alert
from db.engine import Sessions
from streams.acl import PLATFORM_INSTITUTION
from streams.bus import Bus
from streams.kafka_lag import Key, LagSnapshot

log = structlog.get_logger(__name__)

SYSTEM_STATUS = "system:status"
NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # the "last progress" of a group that never applied
# At most one consumer_lag alert per group this often, whichever server sees it first.
LAG_QUIET = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class LagAlert:
    alert: Alert
    partitions: tuple[str, ...]  # "topic/partition" behind it


@dataclass
class LagRules:
    """Pure state machine over snapshots; ``now`` is this process's monotonic clock."""

    lag_threshold: int
    stall_seconds: int
    _seen: dict[Key, int] = field(default_factory=dict)  # next offset last observed
    _still_since: dict[Key, float] = field(default_factory=dict)
    _lag_raised: bool = False
    _stall_raised: bool = False

    def check(self, snapshot: LagSnapshot, now: float) -> list[LagAlert]:
        if snapshot.error is not None:
            return []  # unknown is not healthy, but not evidence either: the gauge says so
        group = snapshot.group[:64]
        raised: list[LagAlert] = []
        stalled: list[str] = []
        for p in snapshot.partitions:
            key = (p.topic, p.partition)
            if p.lag == 0:
                self._still_since.pop(key, None)
            elif self._seen.get(key) != p.next_offset or key not in self._still_since:
                self._still_since[key] = now  # the first look at this wait, or progress
            self._seen[key] = p.next_offset
            since = self._still_since.get(key)
            if since is not None and now - since >= self.stall_seconds:
                stalled.append(f"{p.topic}/{p.partition}")
        total = snapshot.total or 0
        if total > self.lag_threshold:
            if not self._lag_raised:
                self._lag_raised = True
                bucket = snapshot.read_at.replace(second=0, microsecond=0)
                lagging = tuple(f"{p.topic}/{p.partition}" for p in snapshot.partitions if p.lag)
                alert = Alert(
                    PLATFORM_INSTITUTION, "consumer_lag", group, bucket, total, self.lag_threshold
                )
                raised.append(LagAlert(alert, lagging))
        else:
            self._lag_raised = False
        if stalled:
            if not self._stall_raised:
                self._stall_raised = True
                progress = [p.updated_at for p in snapshot.partitions if p.updated_at]
                bucket = max(progress, default=NEVER)
                alert = Alert(
                    PLATFORM_INSTITUTION, "consumer_stall", group, bucket, total, self.stall_seconds
                )
                raised.append(LagAlert(alert, tuple(stalled)))
        else:
            self._stall_raised = False
        return raised

    def retry_later(self, alerts: list[LagAlert]) -> None:
        """``alerts`` could not be recorded: raise them again on the next check."""
        for item in alerts:
            if item.alert.rule == "consumer_lag":
                self._lag_raised = False
            else:
                self._stall_raised = False


async def raise_alerts(sessions: Sessions, bus: Bus | None, alerts: list[LagAlert]) -> None:
    """Record each alert once across processes; publish the ones this call recorded."""
    for item in alerts:
        alert = item.alert
        quiet = LAG_QUIET if alert.rule == "consumer_lag" else None
        detail = {"partitions": list(item.partitions[:100])}
        if not await record_alert(sessions, alert, detail, quiet_for=quiet):
            continue
        log.warning(
            "alerts.consumer",
            rule=alert.rule,
            group=alert.subject,
            value=alert.value,
            threshold=alert.threshold,
            partitions=list(item.partitions[:20]),
        )
        if bus is None:
            continue
        data = {
            "alert": {
                "rule": alert.rule,
                "subject": alert.subject,
                "minute": alert.bucket.isoformat(),
                "value": alert.value,
                "threshold": alert.threshold,
                "partitions": list(item.partitions[:100]),
            }
        }
        try:
            await bus.publish(SYSTEM_STATUS, "analytics.alert", data)
        except Exception as exc:  # recorded and logged; delivery is best effort, as for the others
            log.error("alerts.publish_failed", channel=SYSTEM_STATUS, error=repr(exc))
