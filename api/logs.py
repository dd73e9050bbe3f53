"""Structured logs: JSON lines in cluster mode (for log shippers), readable in dev.

Every record goes through one structlog renderer, including those of stdlib
loggers (uvicorn, SQLAlchemy, aiokafka, Strawberry's error logger): a log shipper
reading JSON lines should not meet uvicorn's colourised text in between.

Per-connection and per-request lines (uvicorn's access log, and its
``"WebSocket /graphql" [accepted]`` / ``connection open`` lines) are off unless
``EDUMATRIX_ACCESS_LOG`` is set: formatting two unstructured lines per WebSocket
handshake was 8% of the server's CPU during a connect burst (py-spy, bench/results/).
Every accepted WebSocket is audited instead (``connect`` and ``disconnect`` rows
with client IP, duration and close code: ``api/auditing.py``), as are failed
authentications.
"""

from __future__ import annotations

import logging
import sys

import structlog

from api.settings import Mode, Settings

# Messages uvicorn's WebSocket protocol logs on ``uvicorn.error`` for every accepted
# connection; rejections and everything else stay.
_PER_CONNECTION = frozenset({'%s - "WebSocket %s" [accepted]', "connection open"})


class _DropPerConnection(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _PER_CONNECTION


_DROP_PER_CONNECTION = _DropPerConnection()


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    fmt = settings.log_format or ("json" if settings.mode is Mode.CLUSTER else "console")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.removeFilter(_DROP_PER_CONNECTION)
    if not settings.access_log:
        uvicorn_error.addFilter(_DROP_PER_CONNECTION)
