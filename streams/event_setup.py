"""Build the event log, aggregator and consumer from settings, once, at startup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from db.analytics_write import Thresholds
from db.engine import Sessions
from streams.aggregator import Aggregator
from streams.bus import Bus
from streams.events import EventLog, Topics

if TYPE_CHECKING:
    from api.settings import Settings
    from streams.kafka_consumer import AnalyticsConsumer


def topics_from(settings: Settings) -> Topics:
    return Topics(
        user_actions=settings.kafka_topic_user_actions,
        institution_events=settings.kafka_topic_institution_events,
        analytics=settings.kafka_topic_analytics,
        dead_letter=settings.kafka_topic_dead_letter,
    )


def build_aggregator(
    settings: Settings, sessions: Sessions, bus: Bus | None, registry: CollectorRegistry | None
) -> Aggregator:
    return Aggregator(
        sessions,
        group=settings.kafka_group_id,
        thresholds=Thresholds(
            errors_per_minute=settings.alert_errors_per_minute,
            failed_logins_per_minute=settings.alert_failed_logins_per_minute,
        ),
        bus=bus,
        registry=registry,
    )


def build_event_log(
    settings: Settings, sessions: Sessions, bus: Bus, registry: CollectorRegistry | None
) -> EventLog:
    """Kafka when ``EDUMATRIX_KAFKA_BOOTSTRAP`` is set, else the in-process log that
    aggregates inside this server (embedded mode)."""
    if settings.kafka_bootstrap:
        from streams.kafka_log import KafkaEventLog

        return KafkaEventLog(
            settings.kafka_bootstrap,
            topics_from(settings),
            partitions=settings.kafka_topic_partitions,
            buffer_size=settings.event_buffer_size,
            registry=registry,
            request_timeout_ms=settings.kafka_request_timeout_ms,
            retry_backoff=settings.kafka_retry_backoff_ms / 1000,
            retry_backoff_max=settings.kafka_retry_backoff_max_ms / 1000,
        )
    from streams.memory_events import MemoryEventLog

    aggregator = build_aggregator(settings, sessions, bus, registry)
    return MemoryEventLog(aggregator, buffer_size=settings.event_buffer_size, registry=registry)


def build_consumer(
    settings: Settings, sessions: Sessions, bus: Bus | None, registry: CollectorRegistry | None
) -> AnalyticsConsumer:
    from streams.kafka_consumer import AnalyticsConsumer

    if not settings.kafka_bootstrap:
        raise ValueError("edumatrix consume needs EDUMATRIX_KAFKA_BOOTSTRAP")
    return AnalyticsConsumer(
        settings.kafka_bootstrap,
        topics_from(settings),
        build_aggregator(settings, sessions, bus, registry),
        partitions=settings.kafka_topic_partitions,
        batch_size=settings.consumer_batch_size,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
        dead_letter_value_bytes=settings.dead_letter_value_bytes,
        dead_letter_deadline=settings.dead_letter_deadline_seconds,
        retry_backoff=settings.kafka_retry_backoff_ms / 1000,
        retry_backoff_max=settings.kafka_retry_backoff_max_ms / 1000,
        leave_group=settings.kafka_leave_group,
    )
