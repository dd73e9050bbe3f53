"""The GraphQL view: HTTP, both WebSocket protocols and GraphiQL on one route.

Authentication happens here, once per HTTP request or WebSocket connection. A
WebSocket whose ``connection_init`` carries no valid token is closed with 4403
before any operation runs, in both protocols (legacy ``graphql-ws`` would
otherwise use 1011), and a connection is closed with 4403 when its token expires.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types import ExecutionResult
from strawberry.types.unset import UnsetType

from api.auth import AuthError
from api.connections import FORBIDDEN, GOING_AWAY
from api.encoding import COMPACT_JSON
from api.metrics import Metrics
from api.plan import Planner
from db import repo
from resolvers.emit import emit, unverified_identity
from schema.context import Context, Services
from schema.errors import masked

if TYPE_CHECKING:  # fast paths, imported only when api/accel turns them on
    from api.http_fast import FastHTTP

log = structlog.get_logger(__name__)


class _ConnectionTracking:
    """Shared by both protocol handlers: count the connection, stop the expiry timer."""

    context: Context

    async def _tracked(self, handle: Any) -> None:
        services = self.context.services
        websocket = self.context.request
        assert isinstance(websocket, WebSocket)
        if services.connections.draining:
            await websocket.close(code=GOING_AWAY, reason="server shutting down")
            return
        services.connections.add(websocket)
        services.metrics.connections.inc()
        try:
            await handle()
        finally:
            services.metrics.connections.dec()
            services.connections.discard(websocket)
            if self.context.expiry is not None:
                self.context.expiry.cancel()


class TransportWSHandler(_ConnectionTracking, BaseGraphQLTransportWSHandler[Context, None]):
    async def handle(self) -> None:
        await self._tracked(super().handle)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_init_received:
            # Strawberry cancelled its timeout task above but keeps the Task object
            # (~1.5 KB with its coroutine) for the life of the connection.
            self.connection_init_timeout_task = None


class LegacyWSHandler(_ConnectionTracking, BaseGraphQLWSHandler[Context, None]):
    async def handle(self) -> None:
        await self._tracked(super().handle)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.send_message({"type": "connection_error"})
            await self.websocket.close(code=4400, reason="Invalid connection init payload")
            return
        self.context.connection_params = payload
        try:
            ack_payload: UnsetType | dict[str, object] | None
            ack_payload = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as exc:
            await self.send_message({"type": "connection_error", "payload": exc.payload})
            await self.websocket.close(code=FORBIDDEN, reason="Forbidden")
            return
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})
        self.connection_acknowledged = True
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())


def multiplexed_handler_class() -> type[TransportWSHandler]:
    """graphql-transport-ws with multiplexed ``channel`` subscriptions (the
    ``multiplex`` fast path); imported only when ``api/accel`` turns it on."""
    from api.mux_handler import MultiplexedSubscribe

    class MultiplexedTransportWSHandler(MultiplexedSubscribe, TransportWSHandler):
        async def handle(self) -> None:
            assert isinstance(self.view, GraphQLView)
            self.planner = self.view.planner
            self._init_mux()
            await super().handle()

    return MultiplexedTransportWSHandler


class GraphQLView(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    planner: Planner  # set by create_app; decides which subscriptions are multiplexed
    fast: FastHTTP | None = None  # set by create_app when the ``http`` fast path is on
    metrics: Metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            if self.fast is not None and scope["method"] == "POST":
                replay = await self.fast(scope, receive, send)
                if replay is None:
                    return
                receive = replay
            self.metrics.http_strawberry.inc()
            await super().__call__(scope, receive, send)
        finally:
            self.metrics.http_duration.observe(time.perf_counter() - started)

    def encode_json(self, data: object) -> str:
        """Strawberry's output from one shared encoder (``api/encoding.py``)."""
        return COMPACT_JSON.encode(data)

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # MaskErrors runs after the operation; an exception outside any resolver
        # skips it and Strawberry would answer with the exception's own message.
        if result.errors:
            result.errors = [masked(e) for e in result.errors]
        return await super().process_result(request, result)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        # The lifespan's state and the header straight from the ASGI scope: Starlette's
        # ``State`` and ``Headers`` objects, built per request to read one entry each,
        # were ~1.5% of a publish.
        services: Services = request.scope["state"]["services"]
        context = Context(request=request, services=services)
        if isinstance(request, Request):
            header = _authorization(request.scope)
            if header is not None:
                try:
                    context.viewer = services.tokens.verify_header(header)
                except AuthError as exc:
                    context.auth_error = exc.reason
                    await self._auth_failed(services, "http", exc.reason, header)
                else:
                    emit(services, context.viewer, "auth.login", {"transport": "http"})
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        value: object = params.get("authorization", params.get("Authorization"))
        services = context.services
        try:
            viewer = services.tokens.verify_header(value if isinstance(value, str) else None)
        except AuthError as exc:
            await self._auth_failed(
                services, "websocket", exc.reason, value if isinstance(value, str) else None
            )
            raise ConnectionRejectionError({"message": exc.reason, "code": "FORBIDDEN"}) from exc
        context.viewer = viewer
        emit(services, viewer, "auth.login", {"transport": "websocket"})
        if viewer.expires_at is not None and isinstance(context.request, WebSocket):
            delay = (viewer.expires_at - datetime.now(UTC)).total_seconds()
            # A timer, not a sleeping task: one per connection for the token's lifetime.
            websocket = context.request
            context.expiry = asyncio.get_running_loop().call_later(
                max(delay, 0.0), lambda: context.services.connections.close_expired(websocket)
            )
        return UnsetType()  # the singleton UNSET; means "ack without payload"

    async def _auth_failed(
        self, services: Services, transport: str, reason: str, header: str | None = None
    ) -> None:
        services.metrics.auth_failures.labels(transport=transport).inc()
        sub, inst = unverified_identity(header)
        data = {"transport": transport, "reason": reason, "unverified": True}
        emit(services, None, "auth.failed", data, institution=inst, user=sub)
        log.info("auth.failed", transport=transport, reason=reason)
        await repo.audit(
            services.sessions, repo.Actor(), "authenticate", transport, "failed", {"reason": reason}
        )


def _authorization(scope: Scope) -> str | None:
    """The first ``Authorization`` header, as Starlette's ``Headers.get`` finds it
    (ASGI servers give header names in lower case)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return None
