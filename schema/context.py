"""The typed per-request (or per-WebSocket-connection) context resolvers receive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.websockets import WebSocket

from api.clientinfo import TrustedProxies, client_ip, user_agent
from db.engine import Sessions
from db.repo import Actor
from schema.errors import Unauthenticated
from schema.loaders import Loaders
from streams.acl import Viewer
from streams.bus import Bus
from streams.events import EventLog
from streams.presence import Presence

if TYPE_CHECKING:
    from api.auth import TokenService
    from api.connections import Connections
    from api.metrics import Metrics
    from api.multiplex import Multiplexer
    from api.outbox import OutboxRelay
    from db.audit_trail import AuditTrail
    from db.group_commit import AnnouncementWriter
    from streams.delivery_stats import DeliveryStats
    from streams.kafka_lag import LagMonitor
    from streams.presence_history import PresenceSampler


@dataclass(frozen=True)
class Services:
    """Long-lived components the lifespan opens; shared by every request."""

    sessions: Sessions
    announcements: AnnouncementWriter
    bus: Bus
    tokens: TokenService
    metrics: Metrics
    connections: Connections
    mux: Multiplexer
    events: EventLog
    presence: Presence
    audit: AuditTrail
    outbox: OutboxRelay
    trusted_proxies: TrustedProxies = TrustedProxies()
    # The consumer group's lag (cluster mode with Kafka); None in embedded mode.
    lag: LagMonitor | None = None
    # The deployment's delivery numbers and presence history (api/live_stats.py).
    delivery: DeliveryStats | None = None
    presence_history: PresenceSampler | None = None


@dataclass
class Context:
    request: Request | WebSocket
    services: Services
    viewer: Viewer | None = None
    auth_error: str | None = None
    connection_params: dict[str, Any] | None = field(default=None)
    expiry: asyncio.TimerHandle | None = None  # closes a WebSocket when its token expires
    # One per HTTP request or WebSocket connection (``api.clientinfo.request_id``):
    # the same in every audit row the request or connection causes.
    request_id: str | None = None
    _origin: tuple[str | None, str | None] | None = field(default=None, repr=False)
    _loaders: Loaders | None = field(default=None, repr=False)

    @property
    def sessions(self) -> Sessions:
        return self.services.sessions

    @property
    def loaders(self) -> Loaders:
        """Batched lookups for fields that reference rows by id (``schema.loaders``),
        made on first use: most operations select no such field."""
        if self._loaders is None:
            self._loaders = Loaders(self.sessions)
        return self._loaders

    @property
    def bus(self) -> Bus:
        return self.services.bus

    def require_viewer(self) -> Viewer:
        if self.viewer is None:
            raise Unauthenticated(self.auth_error or "authentication required")
        return self.viewer

    def on_overflow(self) -> None:
        """Disconnect this connection's client: one of its subscriptions fell behind."""
        self.services.metrics.slow_subscribers.inc()
        if isinstance(self.request, WebSocket):
            self.services.connections.disconnect_slow(self.request)

    @property
    def origin(self) -> tuple[str | None, str | None]:
        """(client IP, user agent) of this request or connection, worked out once
        and only when something is audited."""
        if self._origin is None:
            scope = self.request.scope
            self._origin = (client_ip(scope, self.services.trusted_proxies), user_agent(scope))
        return self._origin

    @property
    def actor(self) -> Actor:
        """The verified viewer (or nobody) with where the request came from."""
        ip, agent = self.origin
        v = self.viewer
        if v is None:
            return Actor(ip=ip, user_agent=agent, request_id=self.request_id)
        return Actor(v.user_id, v.role.value, v.institution, ip, agent, self.request_id)
