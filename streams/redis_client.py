"""One way to open a Redis client for the components that keep state there, and to
run their periodic jobs.

Why one: presence, the delivery numbers, the presence history and the Pusher
occupancy each opened their own client with the same retry policy, written out
four times. A pooled connection goes stale when Redis restarts; retrying a command
a few times on a fresh connection (50 ms doubling, capped at 1 s) turns that into a
short delay instead of a failed request or a lost heartbeat.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)


def resilient_client(url: str, *, decode_responses: bool = True, retries: int = 5) -> Redis:
    """A client that checks idle connections and retries on a dropped one."""
    return Redis.from_url(
        url,
        decode_responses=decode_responses,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def every(interval: float, job: Callable[[], Awaitable[object]], event: str) -> None:
    """Run ``job`` about every ``interval`` seconds (jittered down to 80 %, so the
    processes of a deployment spread out) until cancelled. A Redis error is logged
    as ``event`` and the loop goes on: Redis may come back, and the job catches up."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.0))
        try:
            await job()
        except (RedisError, OSError) as exc:
            log.warning(event, job=getattr(job, "__name__", "job"), error=repr(exc))
