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
        consumer = build_consumer(settings, make_sessionmaker(engine), bus, registry)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        await consumer.run()
        log.info("consume.stopped")
    finally:
        if bus is not None:
            await bus.close()
        await engine.dispose()
