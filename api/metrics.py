"""Prometheus metrics, in a registry per app so tests can build many apps.

With ``--workers N`` each worker has its own registry; scrape every worker (or run
one worker per container), as usual for Python servers.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.delivery_stats import MinuteCounter
from streams.envelope import Envelope
from streams.latency import LATENCY_BUCKETS

__all__ = ["LATENCY_BUCKETS", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # This process's deliveries per minute, flushed to the deployment's store.
        self.minutes = MinuteCounter()
        r = self.registry
        self.connections = Gauge(
            "edumatrix_websocket_connections", "Open GraphQL WebSocket connections", registry=r
        )
        self.http_streams = Gauge(
            "edumatrix_http_streams",
            "Open HTTP streams: SSE (either graphql-sse mode) and multipart subscriptions",
            ["transport"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "edumatrix_subscriptions", "Active subscriptions", ["kind"], registry=r
        )
        self.published = Counter(
            "edumatrix_messages_published_total", "Messages published", ["kind"], registry=r
        )
        self._published: dict[str, Counter] = {}
        self.delivered = Counter(
            "edumatrix_messages_delivered_total", "Messages handed to subscribers", registry=r
        )
        self.delivery_latency = Histogram(
            "edumatrix_delivery_latency_seconds",
            "Publish (sequencer clock) to hand-off to the subscriber's connection",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mux_groups = Gauge(
            "edumatrix_multiplex_groups",
            "Distinct (channel, document, variables, visibility) groups executed once per message",
            registry=r,
        )
        self.mux_connections = Gauge(
            "edumatrix_multiplex_connections",
            "Connections with multiplexed subscriptions, by how their frames are written "
            "(direct: straight to the socket; asgi: through the ASGI send path)",
            ["write"],
            registry=r,
        )
        self.http_operations = Counter(
            "edumatrix_http_operations_total",
            "GraphQL HTTP requests, by who executed them (fast: api/http_fast.py with "
            "graphql-core's executor; direct: api/http_fast.py with api/direct.py)",
            ["path"],
            registry=r,
        )
        self.http_duration = Histogram(
            "edumatrix_http_request_duration_seconds",
            "GraphQL HTTP requests, from reaching the GraphQL endpoint (uvicorn has parsed "
            "the request head) to the response sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Children bound once: labels() costs ~4 us per call (argument checks and a
        # lock), paid on every request; and both series exist from the start.
        self.http_fast = self.http_operations.labels(path="fast")
        self.http_direct = self.http_operations.labels(path="direct")
        self.http_strawberry = self.http_operations.labels(path="strawberry")
        self.slow_subscribers = Counter(
            "edumatrix_slow_subscribers_dropped_total",
            "Subscribers disconnected for falling too far behind",
            registry=r,
        )
        self.auth_failures = Counter(
            "edumatrix_auth_failures_total", "Rejected credentials", ["transport"], registry=r
        )
        self.permission_denied = Counter(
            "edumatrix_permission_denied_total", "ACL denials", ["action"], registry=r
        )
        self.rate_limited = Counter(
            "edumatrix_rate_limited_total",
            "Requests, connections and messages refused by admission control "
            "(api/admission.py), by the limit they hit",
            ["limit"],
            registry=r,
        )

    def published_kind(self, kind: str) -> Counter:
        """The published counter of ``kind``, looked up once per kind."""
        child = self._published.get(kind)
        if child is None:
            child = self._published[kind] = self.published.labels(kind=kind)
        return child

    def observe_delivery(self, envelope: Envelope) -> None:
        self.delivered.inc()
        self.observe_latency(envelope)

    def observe_latency(self, envelope: Envelope, deliveries: int = 1) -> None:
        """One histogram observation; ``deliveries`` (a multiplexed group's members
        that got the message) go to the deployment's per-minute numbers, each with
        this latency (``streams/delivery_stats.py``)."""
        now = time.time()
        lag = max(now - envelope.published_at_ms / 1000, 0.0)
        self.delivery_latency.observe(lag)
        self.minutes.add(now, lag, deliveries)
