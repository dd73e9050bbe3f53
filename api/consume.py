"""``edumatrix consume``: run one analytics consumer until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog
from prometheus_client import CollectorRegistry, start_http_server

from api.logs import configure_logging
from api.settings import Settings
from db.engine import create_engine, make_sessionmaker
from db.migrate import require_current
from streams.bus import Bus
from streams.event_setup import build_consumer
from streams.lag_setup import build_lag_monitor

log = structlog.get_logger(__name__)


async def consume(settings: Settings, *, metrics_port: int | None) -> None:
    configure_logging(settings)
    registry = CollectorRegistry()
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    engine = create_engine(settings.resolved_database_url, pool_size=2)
    bus: Bus | None = None
    try:
        await require_current(engine)
        if settings.redis_url:
            from api.app import build_bus

            bus = build_bus(settings)
            await bus.connect()
        else:
            log.warning("consume.no_bus", hint="alerts need EDUMATRIX_REDIS_URL to reach servers")
        sessions = make_sessionmaker(engine)
        consumer = build_consumer(settings, sessions, bus, registry)
        # The group's lag into this process's gauge from its first second, before it
        # has joined the group or fetched anything (alerts are the servers' job).
        lag = build_lag_monitor(settings, sessions, registry, alerting=False)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        if lag is not None:
            await lag.start()
        try:
            await consumer.run()
        finally:
            if lag is not None:
                await lag.close()
        log.info("consume.stopped")
    finally:
        if bus is not None:
            await bus.close()
        await engine.dispose()
