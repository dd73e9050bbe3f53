"""Background tasks that must never die silently.

Why one helper: presence, the delivery numbers, the presence history and the
sharded bus each run a task for the life of the process; one that died of an
unexpected error stopped its work with nothing in the logs. Four copies of the
same callback had grown, differing only in the event's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def loud(event: str) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that logs ``event`` (critical) when the task died of an error."""

    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical(event, task=task.get_name(), error=repr(task.exception()))

    return report
