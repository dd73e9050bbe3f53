"""Build the consumer-lag monitor from settings, once, at startup.

Servers build it with the alert rules (a stalled pipeline cannot alert by
itself); ``edumatrix consume`` builds it without, for its own gauge. Embedded
mode builds none: the in-process log numbers an event when it applies it, so
its lag is 0 by construction.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from db.engine import Sessions
from streams.bus import Bus
from streams.event_setup import topics_from

if TYPE_CHECKING:
    from api.settings import Settings
    from streams.kafka_lag import LagMonitor


def build_lag_monitor(
    settings: Settings,
    sessions: Sessions,
    registry: CollectorRegistry | None,
    *,
    alerting: bool,
    bus: Bus | None = None,
) -> LagMonitor | None:
    if not settings.kafka_bootstrap:
        return None
    # Imported here: embedded mode never loads aiokafka.
    from streams.kafka_lag import BrokerEnds, LagMonitor, LagSnapshot
    from streams.lag_alerts import LagRules, raise_alerts

    ends = BrokerEnds(
        settings.kafka_bootstrap,
        topics_from(settings).sources,
        partitions=settings.kafka_topic_partitions,
        timeout=max(2.0, min(10.0, 2 * settings.consumer_lag_interval_seconds)),
    )
    monitor = LagMonitor(
        ends,
        sessions,
        settings.kafka_group_id,
        interval=settings.consumer_lag_interval_seconds,
        registry=registry,
    )
    if alerting:
        rules = LagRules(settings.alert_consumer_lag, settings.alert_consumer_stall_seconds)

        async def check(snapshot: LagSnapshot) -> None:
            alerts = rules.check(snapshot, time.monotonic())
            try:
                await raise_alerts(sessions, bus, alerts)
            except Exception:  # e.g. the database is away: not raised, so not forgotten
                rules.retry_later(alerts)
                raise

        monitor.on_snapshot = check
    return monitor
