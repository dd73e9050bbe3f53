"""One way to open a Redis client for the components that keep state there, and to
run their periodic jobs.

Why one: presence, the delivery numbers, the presence history and the Pusher
occupancy each opened their own client with the same retry policy, written out
four times. A pooled connection goes stale when Redis restarts; retrying a command
a few times on a fresh connection (50 ms doubling, capped at 1 s) turns that into a
short delay instead of a failed request or a lost heartbeat.

``EDUMATRIX_REDIS_URL`` names one Redis (``redis://``, ``rediss://``), a Redis
Cluster (``redis+cluster://host:port,host:port``, ``rediss+cluster://`` for TLS:
the nodes are where the client starts, it finds the others itself), or a list of
independent Redis servers (``redis://a:6379,redis://b:6379``) over which channels
are spread by hash slot. One parser decides which, so every component agrees.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)

# Commands both clients answer the same way; the components type against this.
AnyRedis = Redis | RedisCluster
# What a command raises when Redis is away. Catch this, not RedisError: on a
# cluster, an uncovered slot or no reachable node raises RedisClusterException,
# which is not a RedisError.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = {"redis", "rediss", "unix"}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names. ``url`` is a plain URL of the first node (with the
    credentials, database and options of the whole URL) for redis-py; ``shards``
    the independent Redis servers of a shard list, in order (one for one Redis)."""

    cluster: bool
    url: str
    nodes: tuple[tuple[str, int], ...]
    shards: tuple[str, ...] = ()


def parse_redis_url(url: str) -> RedisTarget:
    """Raise ``ValueError`` with what is wrong, so settings can refuse a bad URL at
    start instead of the first publish failing."""
    if "," in url and url.count("://") > 1:
        # Split only at a comma that starts another URL: a password may hold one.
        shards = tuple(u.strip() for u in re.split(r",(?=\s*[A-Za-z][\w+.-]*://)", url))
        for shard in shards:
            parts = urlsplit(shard)
            if parts.scheme.lower() not in _PLAIN_SCHEMES or "," in parts.netloc.rpartition("@")[2]:
                raise ValueError(f"a shard list takes redis:// URLs, not {shard!r}")
        if len(set(shards)) != len(shards):
            raise ValueError("a Redis shard is listed twice")
        head = urlsplit(shards[0])
        return RedisTarget(
            False, shards[0], ((head.hostname or "localhost", head.port or 6379),), shards
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _PLAIN_SCHEMES:
        if "," in parts.netloc.rpartition("@")[2]:  # hosts, not a password
            raise ValueError(
                "several hosts in a redis:// URL: for a Redis Cluster use "
                "redis+cluster://host:port,host:port, for independent shards "
                "redis://host:port,redis://host:port"
            )
        return RedisTarget(
            False, url, ((parts.hostname or "localhost", parts.port or 6379),), (url,)
        )
    if scheme not in _CLUSTER_SCHEMES:
        raise ValueError(f"unknown Redis URL scheme {parts.scheme!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for host in hosts.split(","):
        node = urlsplit(f"//{host}")
        if not node.hostname:
            raise ValueError(f"empty host in Redis Cluster URL {url!r}")
        nodes.append((node.hostname, node.port or 6379))
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0")
    first = f"{credentials}@{hosts.split(',')[0]}" if credentials else hosts.split(",")[0]
    plain = urlunsplit((_CLUSTER_SCHEMES[scheme], first, "", parts.query, ""))
    return RedisTarget(True, plain, tuple(nodes))


def is_cluster(url: str) -> bool:
    return parse_redis_url(url).cluster


def state_url(url: str) -> str:
    """Where the deployment-wide state lives (presence, delivery numbers, Pusher
    occupancy, rate limits): the URL itself, or the first of a shard list. Only
    channels (history, offsets, live delivery) are spread over the shards."""
    target = parse_redis_url(url)
    return target.shards[0] if len(target.shards) > 1 else url


def shard_of(channel: str, count: int) -> int:
    """Which of ``count`` independent shards holds ``channel``: its hash slot (as a
    Redis Cluster computes it, ``{tags}`` included) in ``count`` equal slot ranges.
    Stable for a given ``count``; another count moves channels (docs/redis-cluster.md)."""
    return key_slot(channel.encode()) * count // REDIS_CLUSTER_HASH_SLOTS


def cluster_client(url: str, **options: Any) -> RedisCluster:
    """A cluster client that starts from every node the URL names."""
    target = parse_redis_url(url)
    if not target.cluster:
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    return RedisCluster.from_url(
        target.url, startup_nodes=[ClusterNode(h, p) for h, p in target.nodes], **options
    )


def resilient_client(url: str, *, decode_responses: bool = True, retries: int = 5) -> AnyRedis:
    """A client that checks idle connections and retries on a dropped one. On a
    cluster, redis-py also follows MOVED/ASK and refreshes the slot map after a
    failover before it retries."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=retries)
    url = state_url(url)
    if is_cluster(url):
        return cluster_client(
            url, decode_responses=decode_responses, health_check_interval=10, retry=retry
        )
    return Redis.from_url(
        url,
        decode_responses=decode_responses,
        health_check_interval=10,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def sharded(script: str, cluster: bool) -> str:
    """A script written with ``PUBLISH`` as it must run here: on a cluster, classic
    Pub/Sub is broadcast to every node (adding nodes adds no fan-out capacity), so
    the message goes to its slot's shard with ``SPUBLISH``. Each script passes a
    channel in the same slot as its keys, which Redis requires of a script."""
    if not cluster:
        return script
    if script.count("redis.call('PUBLISH'") < 1:
        raise ValueError("script has no PUBLISH to shard")
    return script.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")


async def every(interval: float, job: Callable[[], Awaitable[object]], event: str) -> None:
    """Run ``job`` about every ``interval`` seconds (jittered down to 80 %, so the
    processes of a deployment spread out) until cancelled. A Redis error is logged
    as ``event`` and the loop goes on: Redis may come back, and the job catches up."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.0))
        try:
            await job()
        except REDIS_DOWN as exc:
            # A cluster none of whose nodes answers raises RedisClusterException
            # (redis-py), which is no RedisError.
            log.warning(event, job=getattr(job, "__name__", "job"), error=repr(exc))
