"""The app factory and the lifespan that owns every long-lived resource."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import strawberry
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)

from api import dashboard
from api.accel import Decision
from api.admission import Admission
from api.auth import TokenService
from api.body_limit import BodyLimit
from api.clientinfo import TrustedProxies
from api.connections import Connections
from api.graphiql import ASSETS_PATH, GraphiQLPage
from api.graphql import GraphQLView, multiplexed_handler_class
from api.live_stats import build_delivery_stats, build_presence_history
from api.logs import configure_logging
from api.metrics import Metrics
from api.multiplex import Multiplexer
from api.outbox import OutboxRelay
from api.plan import PlanDirect, Planner
from api.pusher import PusherEndpoint
from api.pusher_apps import parse_apps
from api.pusher_http import PusherHTTP
from api.settings import Mode, Settings
from api.streaming import HTTPStreams
from db.audit_trail import AuditTrail
from db.engine import create_engine, make_sessionmaker
from db.group_commit import AnnouncementWriter
from db.migrate import require_current
from schema.build import build_schema, limit_rules
from schema.context import Services
from streams.bus import Bus, Pacing
from streams.event_setup import build_event_log
from streams.lag_setup import build_lag_monitor
from streams.presence import Presence
from streams.presence_memory import MemoryPresence
from streams.presence_redis import RedisPresence

log = structlog.get_logger(__name__)


def build_bus(settings: Settings, registry: CollectorRegistry | None = None) -> Bus:
    pacing = Pacing(
        replay_concurrency=settings.replay_concurrency,
        replay_queue_size=settings.replay_queue_size,
        replay_wait_seconds=settings.replay_wait_seconds,
        redis_pool_size=settings.redis_pool_size,
        redis_pool_timeout_seconds=settings.redis_pool_timeout_seconds,
        reconnect_max_seconds=settings.bus_reconnect_max_seconds,
    )
    if settings.redis_url:
        return Bus.redis(
            settings.redis_url,
            prefix=settings.redis_prefix,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl_seconds,
            queue_size=settings.subscriber_queue_size,
            pacing=pacing,
            registry=registry,
        )
    return Bus.memory(
        history_size=settings.history_size,
        history_ttl=settings.history_ttl_seconds,
        queue_size=settings.subscriber_queue_size,
        pacing=pacing,
        registry=registry,
    )


def build_presence(settings: Settings) -> Presence:
    """Redis presence when processes share Redis, else this process's memory."""
    if settings.redis_url:
        return RedisPresence(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_seconds=settings.presence_timeout_seconds,
            queue_size=settings.subscriber_queue_size,
        )
    return MemoryPresence(queue_size=settings.subscriber_queue_size)


async def _bounded_close(step: str, close: Callable[[], Awaitable[None]], limit_s: float) -> str:
    """Run one shutdown step for at most ``limit_s`` seconds, say which step it was
    if it fails or runs out, and let the caller go on with the next.

    Why: uvicorn waits for the lifespan's shutdown without a limit, so a close that
    hangs (a backend that never answers) kept a stopped server running until killed.
    Each step has its own limit, so one that hangs cannot eat the time of the event
    flush after it.
    """
    try:
        async with asyncio.timeout(limit_s):
            await close()
    except TimeoutError:
        log.error("server.shutdown_step_timeout", step=step, limit_s=limit_s)
        return "timeout"
    except Exception as exc:  # keep closing the others; the process is stopping anyway
        log.error("server.shutdown_step_failed", step=step, error=repr(exc))
        return "failed"
    return "closed"


def _plan_direct(fast: Decision) -> PlanDirect | None:
    if "direct" not in fast:
        return None
    from api.direct import plan_operation

    return plan_operation


def _install_fast_paths(
    fast: Decision, schema: strawberry.Schema, view: GraphQLView, metrics: Metrics
) -> None:
    """Swap in each fast path that is on; every one that is off leaves the stock
    library path in place (``api/accel`` decided, and imported each module once)."""
    if "inputs" in fast:
        from schema.inputs import plan_inputs

        plan_inputs(schema)  # input objects without Strawberry's per-field walk
    if "http" in fast:
        from api.http_fast import FastHTTP

        view.fast = FastHTTP(view, schema, view.planner, metrics)
    if "multiplex" in fast:
        view.graphql_transport_ws_handler_class = multiplexed_handler_class()


def _cors(settings: Settings) -> list[Middleware]:
    """CORS for HTTP from ``EDUMATRIX_ALLOWED_ORIGINS``, the list that also admits
    cross-origin WebSockets, so one setting decides both.

    Why: a browser app on another origin (a dev server on :5173, an app domain)
    could subscribe but not query or mutate (``OPTIONS`` answered 405, no
    ``Access-Control-Allow-Origin``). Outermost, so a preflight is answered before
    body limits, admission or routing. No credentials mode: the API authenticates
    with bearer tokens, never cookies, so ``*`` exposes nothing a cookie would.
    Empty list: no middleware at all (and same-origin pages need none).
    """
    origins = settings.allowed_origins
    if not origins:
        return []
    from starlette.middleware.cors import CORSMiddleware

    return [
        Middleware(
            CORSMiddleware,
            allow_origins=["*"] if "*" in origins else origins,
            # PUT and DELETE, and the stream token: graphql-sse's single connection
            # mode (api/streaming.py).
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=[
                "authorization",
                "content-type",
                "accept",
                "x-request-id",
                "x-graphql-event-stream-token",
            ],
            expose_headers=["retry-after", "x-request-id"],
            max_age=600,
        )
    ]


def _middleware(fast: Decision, view: GraphQLView) -> list[Middleware]:
    middleware = []
    if "rawsocket" in fast:
        from api.rawsocket import KeepServerSend

        middleware.append(Middleware(KeepServerSend))
    if "lane" in fast:
        from api.lane import WebSocketLane

        middleware.append(Middleware(WebSocketLane, path="/graphql", endpoint=view))
    return middleware


def create_app(settings: Settings | None = None, extensions: Sequence[Any] = ()) -> Starlette:
    """The app; ``extensions``: Strawberry schema extensions added after ours."""
    settings = settings or Settings()
    configure_logging(settings)
    tokens, generated_secret = TokenService.from_settings(settings)
    metrics = Metrics()
    schema = build_schema(settings, extensions)
    fast = settings.decide_fast_paths(schema.extensions)
    fast.export(metrics.registry)
    view = GraphQLView(
        schema,
        graphql_ide="graphiql",  # the page is ours (view.ide), not Strawberry's CDN one
        subscription_protocols=(
            GRAPHQL_TRANSPORT_WS_PROTOCOL,
            GRAPHQL_WS_PROTOCOL,
            GRAPHQL_SSE_PROTOCOL,
            MULTIPART_SUBSCRIPTION_PROTOCOL,
        ),
        allowed_origins=settings.allowed_origins,
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        connection_init_wait_timeout=timedelta(seconds=settings.connection_init_timeout_seconds),
    )
    view.planner = Planner(
        schema._schema,
        max_tokens=settings.max_query_tokens,
        limit_rules=limit_rules(settings),
        plan_direct=_plan_direct(fast),
    )
    view.metrics = metrics
    view.admission = admission = Admission(
        settings, metrics, paced_memory="ratelimit_memory" in fast
    )
    view.tarpit_seconds = settings.rate_limit_tarpit_seconds
    view.ide = GraphiQLPage(persist_headers=settings.graphiql_persist_headers)
    view.streams = streams = HTTPStreams(
        view,
        multiplex="multiplex" in fast,
        heartbeat_seconds=settings.stream_heartbeat_seconds,
        reservation_seconds=settings.stream_reservation_seconds,
    )
    _install_fast_paths(fast, schema, view, metrics)
    # The Pusher protocol (api/pusher.py): the same admission, bus, ACL and presence.
    pusher_apps = parse_apps(settings.pusher_apps)
    pusher = PusherEndpoint(settings, pusher_apps, admission)
    pusher_http = PusherHTTP(settings, pusher_apps, pusher)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if generated_secret:
            log.warning(
                "auth.dev_secret",
                path=str(settings.dev_secret_path),
                hint="embedded mode signs tokens with a generated secret; "
                "set EDUMATRIX_JWT_SECRET for anything shared",
            )
        engine = create_engine(settings.resolved_database_url, pool_size=settings.db_pool_size)
        await require_current(engine)
        bus = build_bus(settings, metrics.registry)
        await bus.connect()
        connections = Connections(also_drain=lambda: streams.drain() + pusher.drain())
        app.state.connections = connections
        connections.drain_before()
        sessions = make_sessionmaker(engine)
        events = build_event_log(settings, sessions, bus, metrics.registry)
        await events.start()
        # The group's lag, read from the broker and Postgres, and its alert rules: a
        # stalled pipeline cannot alert by itself. None in embedded mode (lag 0).
        lag = build_lag_monitor(settings, sessions, metrics.registry, alerting=True, bus=bus)
        if lag is not None:
            await lag.start()
        presence = build_presence(settings)
        await presence.start()
        # Deployment-wide delivery numbers and presence over the last hour.
        delivery = build_delivery_stats(settings, metrics.minutes)
        await delivery.start()
        presence_history = build_presence_history(settings, presence, metrics.registry)
        await presence_history.start()
        announcements = AnnouncementWriter(engine)
        audit = AuditTrail(sessions, per_minute=settings.audit_failed_auth_per_minute)
        outbox = OutboxRelay(engine, bus, metrics.registry)
        await outbox.start()  # first, what a crash or a Redis outage left behind
        services = Services(
            sessions=sessions,
            announcements=announcements,
            bus=bus,
            tokens=tokens,
            metrics=metrics,
            connections=connections,
            events=events,
            mux=Multiplexer(
                schema._schema,
                bus,
                metrics,
                outbox_limit=settings.subscriber_queue_size,
                raw_writes="rawsocket" in fast,
            ),
            presence=presence,
            audit=audit,
            outbox=outbox,
            trusted_proxies=TrustedProxies.parse(settings.trusted_proxies),
            lag=lag,
            delivery=delivery,
            presence_history=presence_history,
        )
        await pusher.start(services)
        # Everything built so far (schema, SQLAlchemy metadata, imported modules)
        # lives as long as the process; the cyclic GC's full collections walked all
        # of it and paused the loop for 100-200 ms at 1,000 connections. Frozen
        # objects are skipped by every collection.
        gc.collect()
        gc.freeze()
        log.info("server.fast_paths", **fast.summary())
        log.info("server.ready", mode=settings.mode.value, bus=bus.kind, db=engine.dialect.name)
        try:
            yield {"services": services}
        finally:
            steps: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
                ("pusher", pusher.close, 10.0),  # its claims, then the webhooks queued
                ("presence_history", presence_history.close, 5.0),
                ("presence", presence.close, 5.0),  # members of this process leave now
                ("delivery_stats", delivery.close, 5.0),  # the last second's counts
                ("events", events.close, 10.0),  # flush buffered events first
                ("announcements", announcements.close, 5.0),
                ("outbox", outbox.close, 5.0),  # delete what went out; the rest waits
                ("audit", audit.close, 5.0),  # queued rows and open failed-auth counts
                ("bus", bus.close, 5.0),
                ("admission", admission.close, 5.0),  # its Redis pool, if any
                ("database", engine.dispose, 5.0),
            ]
            if lag is not None:
                steps.insert(0, ("lag", lag.close, 5.0))  # before the bus and database
            for step, close, limit_s in steps:
                await _bounded_close(step, close, limit_s)
            log.info("server.stopped")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        services: Services = request.state.services
        checks: dict[str, str] = {}
        try:
            async with services.sessions() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            checks["database"] = f"error: {exc.__class__.__name__}"
        try:
            await services.bus.check()
            checks["bus"] = "ok"
        except Exception as exc:
            checks["bus"] = f"error: {exc}"
        ready = all(v == "ok" for v in checks.values())
        # Reported, never deciding: no request waits for the event log, so a broker
        # outage must not take this node out of the load balancer ("degraded: ...").
        checks["events"] = services.events.health()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "mode": settings.mode.value, **checks},
            status_code=200 if ready else 503,
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def graphiql(request: Request) -> Response:
        return RedirectResponse("/graphql")

    dashboard_page = dashboard.DashboardPage()
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/graphiql", graphiql),
        Mount(ASSETS_PATH, app=view.ide.assets()),  # GraphiQL's files, from package data
        # The live dashboard: a static page and its files, from package data.
        Route(dashboard.PATH, dashboard_page.response),
        Mount(dashboard.ASSETS_PATH, app=dashboard_page.assets()),
        Mount(dashboard.APP_PATH, app=dashboard_page.app_files()),
        Route("/graphql", view),  # with the lane fast path on, WebSocketLane serves it
        WebSocketRoute("/graphql", view),
        WebSocketRoute("/app/{key}", pusher),  # pusher-js, Laravel Echo
        *pusher_http.routes(),
    ]
    # The body limit goes first: no other layer should read a body it refuses.
    refuse_body = partial(admission.refused, "body_bytes")
    body_limit = Middleware(BodyLimit, max_bytes=settings.max_body_bytes, on_refused=refuse_body)
    first = [body_limit] if settings.max_body_bytes else []
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[*_cors(settings), *first, *_middleware(fast, view)],
    )
    app.state.settings = settings
    app.state.admission = admission
    if settings.mode is Mode.CLUSTER and generated_secret:  # pragma: no cover - Settings forbids
        raise RuntimeError("refusing a generated secret in cluster mode")
    return app
