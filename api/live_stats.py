"""The deployment's delivery numbers and presence history, built once from settings.

Each has a memory store (embedded mode: this process is the deployment) and a
Redis one (cluster mode: every process shares it), like presence and history.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from api.settings import Settings
from streams.delivery_stats import DeliveryStats, DeliveryStore, MemoryDeliveryStore, MinuteCounter
from streams.presence import Presence
from streams.presence_history import (
    MemoryPresenceHistory,
    PresenceHistoryStore,
    PresenceSampler,
)


def build_delivery_stats(settings: Settings, counter: MinuteCounter) -> DeliveryStats:
    """Redis when processes share Redis, else this process's memory."""
    store: DeliveryStore
    if settings.redis_url:
        from streams.delivery_stats_redis import RedisDeliveryStore

        store = RedisDeliveryStore(settings.redis_url, prefix=settings.redis_prefix)
    else:
        store = MemoryDeliveryStore()
    return DeliveryStats(
        counter,
        store,
        flush_seconds=settings.delivery_stats_flush_seconds,
        window_seconds=settings.delivery_stats_report_window_seconds,
    )


def build_presence_history(
    settings: Settings, presence: Presence, registry: CollectorRegistry | None = None
) -> PresenceSampler:
    """Redis when processes share Redis, else this process's memory."""
    interval = settings.presence_history_interval_seconds
    store: PresenceHistoryStore
    if settings.redis_url:
        from streams.presence_history_redis import RedisPresenceHistory

        store = RedisPresenceHistory(
            settings.redis_url, prefix=settings.redis_prefix, interval=interval
        )
    else:
        store = MemoryPresenceHistory(interval=interval)
    return PresenceSampler(presence, store, registry)
