"""Admission control: how much one subject, one address or one connection may take.

Why: without it one service token published 82,952 times in 20 s, one student
token held 100,000 subscriptions, and a failed-login flood wrote an audit row and
a log line per attempt. Each limit below is a setting (``0`` turns it off) and
every refusal is counted in ``edumatrix_rate_limited_total{limit}``.

Rates (the `limits` library, fixed windows):

- ``user_mutations`` / ``service_mutations``: mutation root fields per token
  ``sub`` (service tokens have their own, higher rate). HTTP answers 429 with
  ``Retry-After``; over WebSocket that operation gets an error with code
  ``RATE_LIMITED``. Shared by every process through Redis (one, or a Redis
  Cluster) in cluster mode.
- ``auth_failures``: failed authentications per client IP (``api.clientinfo``).
  Over it: HTTP 429 and WebSocket close 4429 instead of the usual refusal, and the
  view neither logs nor emits an event per failure any more (the audit trail
  already writes only a few rows per IP and minute and counts the rest,
  ``db.audit_trail``), so failing on purpose cannot fill the disk.
- ``ws_messages``: inbound frames per WebSocket connection; over it the
  connection is closed with 4429 "flood". Process-local (a connection lives in one).

Counts (this process's open connections and operations; a per-process bound is
what protects a process's memory):

- ``ip_connections``, ``subject_connections``: open WebSockets per client IP and
  per ``sub``; over it: close 4429 "too many connections".
- ``subject_subscriptions``: operations open across one ``sub``'s WebSockets; over
  it the new one gets an error with code ``RATE_LIMITED``.

A check costs one counter increment: an in-memory dict, or one Redis round trip
(a Lua script) for the shared rates. Rejections cost the same, so a throttled
client does not slow others down.
"""

from __future__ import annotations

import itertools
import time
from math import ceil
from typing import TYPE_CHECKING, Any

import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from starlette.types import Message, Receive, Scope

from schema.errors import RateLimited
from streams.redis_client import RedisTarget, parse_redis_url, state_url

if TYPE_CHECKING:
    from api.metrics import Metrics
    from api.settings import Settings
    from schema.context import Context
    from streams.acl import Viewer

log = structlog.get_logger(__name__)

# WebSocket close codes (graphql-transport-ws uses 4429 for "too many", and 4408
# for a missing connection_init; legacy graphql-ws gets the same ones from us).
TOO_MANY = 4429
INIT_TIMEOUT = 4408
TOO_MANY_CONNECTIONS = "too many connections"
TOO_MANY_AUTH_FAILURES = "too many failed authentications"
FLOOD = "flood"
FLOODED = "edumatrix.flooded"  # scope key: close this WebSocket with 4429 "flood"

LIMITS = (
    "user_mutations",
    "service_mutations",
    "auth_failures",
    "ws_messages",
    "ip_connections",
    "subject_connections",
    "subject_subscriptions",
    "body_bytes",
)
OFF = "0"
STORAGE_TIMEOUT_SECONDS = 1.0
_STORAGE_ERROR_LOG_INTERVAL = 10.0


class Refused(Exception):
    """A WebSocket to close with ``code`` and ``reason`` instead of acknowledging it.

    Not a ``ConnectionRejectionError``: Strawberry would close that one with 4403.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_rate(text: str) -> RateLimitItem | None:
    """One rate in the `limits` notation (``20/second``, ``300/10 minutes``);
    ``0`` (or empty) means unlimited. ``ValueError`` otherwise, also for several
    rates, which would take several storage round trips per check."""
    text = text.strip()
    if text in ("", OFF):
        return None
    items = parse_many(text)
    if len(items) != 1:
        raise ValueError(f"one rate expected, got {len(items)} in {text!r}")
    if items[0].amount < 1:
        raise ValueError(f"a rate of {items[0].amount} admits nothing; use 0 for unlimited")
    return items[0]


class PacedMemoryStorage(MemoryStorage):
    """`limits`' memory storage with its expiry sweep run at most once per ``interval``.

    Why: the stock storage starts a sweep over every key after each hit that finds
    the previous sweep done, so a hit cost O(live keys): 10 us with 100 keys,
    750 us with 10,000 (one flooding client per key). Reads already drop expired
    keys, so sweeping once a second only bounds memory, as before.

    The hook is the storage's private ``__schedule_expiry`` (name-mangled): should a
    `limits` release rename it, this override is simply never called and the
    storage behaves as the stock one (correct, per-hit sweeps);
    ``tests/unit/test_admission.py`` notices that.
    """

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__()
        self._interval = interval
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._interval
        await MemoryStorage._MemoryStorage__schedule_expiry(self)  # type: ignore[attr-defined]


class _Counts:
    """Open things per key, with a cap; keys at zero are dropped."""

    __slots__ = ("_counts", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0: unlimited (still counted: cheap, and visible in tests)
        self._counts: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        count = self._counts.get(key, 0)
        if self.cap and count >= self.cap:
            return False
        self._counts[key] = count + 1
        return True

    def add(self, key: str, delta: int) -> None:
        count = self._counts.get(key, 0) + delta
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def release(self, key: str) -> None:
        self.add(key, -1)

    def full(self, key: str) -> bool:
        return bool(self.cap) and self._counts.get(key, 0) >= self.cap

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)


class CountedOperations(dict[str, Any]):
    """A protocol handler's operations (or legacy tasks) dict that keeps the total
    of its subject's operations across connections up to date.

    Strawberry and ``api.mux_handler`` add and remove entries with ``[]=``, ``del``
    and ``pop``; each counts here. Installed before ``connection_init``; entries
    exist only after it, when the context's viewer (the subject) is known.
    """

    __slots__ = ("_context", "_counts")

    def __init__(self, counts: _Counts, context: Context) -> None:
        super().__init__()
        self._counts = counts
        self._context = context

    def _add(self, delta: int) -> None:
        viewer = self._context.viewer
        if viewer is not None:
            self._counts.add(viewer.user_id, delta)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self:
            self._add(1)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._add(-1)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self._add(-1)
            return super().pop(key)
        return super().pop(key, *default)

    def clear(self) -> None:
        self._add(-len(self))
        super().clear()


class Admission:
    """Every admission check of one server process; built once by ``create_app``."""

    def __init__(self, settings: Settings, metrics: Metrics, *, paced_memory: bool = True) -> None:
        """``paced_memory``: the ``ratelimit_memory`` fast path of ``api/accel`` is on
        (:class:`PacedMemoryStorage`); off, `limits`' stock memory storage."""
        self._memory: type[MemoryStorage] = PacedMemoryStorage if paced_memory else MemoryStorage
        self._metrics = metrics
        self._refused = {name: metrics.rate_limited.labels(limit=name) for name in LIMITS}
        self._user_mutations = parse_rate(settings.rate_limit_user_mutations)
        self._service_mutations = parse_rate(settings.rate_limit_service_mutations)
        self._auth_failures = parse_rate(settings.rate_limit_auth_failures_per_ip)
        self._ws_messages = parse_rate(settings.rate_limit_ws_messages)
        self._pool: ConnectionPool | None = None
        self._cluster: RedisCluster | None = None
        self._shared = FixedWindowRateLimiter(self._shared_storage(settings))
        self._local = FixedWindowRateLimiter(self._memory())
        self.ip_connections = _Counts(settings.max_connections_per_ip)
        self.subject_connections = _Counts(settings.max_connections_per_subject)
        self.subject_operations = _Counts(settings.max_subscriptions_per_subject)
        self._connection_ids = itertools.count()
        self._storage_error_logged = 0.0

    def _shared_storage(self, settings: Settings) -> Storage:
        """Redis (through redis-py) when processes share one, else this process's memory."""
        if not settings.redis_url:
            return self._memory()
        key_prefix = f"{settings.redis_prefix}:limits"
        url = state_url(settings.redis_url)  # with the other deployment-wide state
        target = parse_redis_url(url)
        if target.cluster:
            return self._cluster_storage(target, key_prefix)
        # Our own pool, so the lifespan can close it (the storage has no close), with
        # timeouts: a Redis that stopped answering must not hold requests (they are
        # then admitted, see _hit).
        self._pool = ConnectionPool.from_url(
            url,
            socket_timeout=STORAGE_TIMEOUT_SECONDS,
            socket_connect_timeout=STORAGE_TIMEOUT_SECONDS,
        )
        return RedisStorage(
            "async+" + url,
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=key_prefix,
            connection_pool=self._pool,  # type: ignore[arg-type]  # passed to redis-py
        )

    def _cluster_storage(self, target: RedisTarget, key_prefix: str) -> Storage:
        """`limits`' Redis Cluster storage, held to the pool's bounds: the same
        timeouts and no retry (as the pool's connections), where redis-py's cluster
        default (ten retries) holds a check for as long as a master hangs. MOVED is
        still followed, and the check after a failover finds the new master. A rate
        has one key, so its script runs on the master of that key's slot."""
        # Credentials, TLS and ?options as the other components' cluster client reads
        # them (RedisCluster.from_url); the URL's own options win, as there.
        options: dict[str, Any] = {
            "socket_timeout": STORAGE_TIMEOUT_SECONDS,
            "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 0),
            **parse_url(target.url),
        }
        for name in ("host", "port", "db"):
            options.pop(name, None)
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        storage = RedisClusterStorage(
            "async+redis+cluster://" + ",".join(f"{h}:{p}" for h, p in target.nodes),
            wrap_exceptions=True,
            implementation="redispy",
            key_prefix=key_prefix,
            **options,
        )
        # The storage makes its client and never closes it; close() does.
        if isinstance(storage.bridge, RedispyBridge):
            client = storage.bridge.get_connection()
            self._cluster = client if isinstance(client, RedisCluster) else None
        return storage

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()

    def refused(self, limit: str) -> None:
        """Count one refusal of ``limit`` (one of :data:`LIMITS`)."""
        self._refused[limit].inc()

    async def _hit(self, item: RateLimitItem, key: str, cost: int = 1) -> bool:
        """True if admitted. Fails open when the shared storage (Redis) is down:
        mutations then fail on their own, and logins keep working. A Redis Cluster
        none of whose nodes answers raises redis-py's ``RedisClusterException``,
        which is no ``RedisError``, so `limits` does not wrap it."""
        try:
            return await self._shared.hit(item, key, cost=cost)
        except (StorageError, RedisClusterException, OSError) as exc:
            now = time.monotonic()
            if now - self._storage_error_logged > _STORAGE_ERROR_LOG_INTERVAL:
                self._storage_error_logged = now
                log.warning("admission.storage_unavailable", error=repr(exc))
            return True

    async def admit_mutation(self, viewer: Viewer, cost: int = 1) -> None:
        """Count ``cost`` mutation root fields of ``viewer``; raise RateLimited over the rate."""
        from streams.acl import Role

        service = viewer.role is Role.SERVICE
        item = self._service_mutations if service else self._user_mutations
        if item is None:
            return
        if await self._hit(item, f"mutations:{viewer.user_id}", max(cost, 1)):
            return
        limit = "service_mutations" if service else "user_mutations"
        self.refused(limit)
        raise RateLimited(
            f"too many mutations: at most {item.amount} per {_window(item)}",
            limit=limit,
            retry_after=ceil(item.get_expiry()),
        )

    async def auth_failed(self, ip: str | None) -> RateLimited | None:
        """Count one failed authentication from ``ip``. Over the rate: the error to
        answer with (counted in the metric; the caller must not log it one by
        one); otherwise None."""
        item = self._auth_failures
        if item is None or await self._hit(item, f"auth-failures:{ip or 'unknown'}"):
            return None
        self.refused("auth_failures")
        return RateLimited(TOO_MANY_AUTH_FAILURES, "auth_failures", ceil(item.get_expiry()))

    def counted_receive(self, scope: Scope, receive: Receive) -> Receive:
        """A WebSocket's ``receive`` that counts its inbound frames, any of them
        (valid, not JSON, binary, before ``connection_init``: legacy graphql-ws skips
        non-JSON frames without a word, so counting protocol messages would miss
        those). Over the rate the app is told the peer left, so its handler ends and
        cancels its operations, and ``scope[FLOODED]`` asks the view to close the
        socket with 4429 "flood" (a close sent from here would race the handler's
        own sends)."""
        item = self._ws_messages
        if item is None:
            return receive
        key = f"ws:{next(self._connection_ids)}"  # never reused by this process
        local = self._local

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive" and not await local.hit(item, key):
                self.refused("ws_messages")
                scope[FLOODED] = True
                return {"type": "websocket.disconnect", "code": TOO_MANY, "reason": FLOOD}
            return message

        return receiving

    def open_ip(self, ip: str | None) -> bool:
        """Take a connection slot of ``ip``; False: over the limit (close 4429)."""
        if self.ip_connections.acquire(ip or "unknown"):
            return True
        self.refused("ip_connections")
        return False

    def close_ip(self, ip: str | None) -> None:
        self.ip_connections.release(ip or "unknown")

    def open_subject(self, viewer: Viewer) -> bool:
        """Take a connection slot of ``viewer``'s sub; False: over the limit (4429)."""
        if self.subject_connections.acquire(viewer.user_id):
            return True
        self.refused("subject_connections")
        return False

    def close_subject(self, viewer: Viewer) -> None:
        self.subject_connections.release(viewer.user_id)

    def admit_subscription(self, viewer: Viewer) -> None:
        """Raise RateLimited if ``viewer``'s sub holds its maximum of operations."""
        counts = self.subject_operations
        if not counts.full(viewer.user_id):
            return
        self.refused("subject_subscriptions")
        raise RateLimited(
            f"too many subscriptions: at most {counts.cap} open across your connections",
            limit="subject_subscriptions",
        )

    def operations(self, context: Context) -> CountedOperations:
        """The operations dict for a WebSocket handler of ``context``."""
        return CountedOperations(self.subject_operations, context)


def _window(item: RateLimitItem) -> str:
    """``second``, ``10 seconds``: the window of a rate, for messages."""
    granularity = item.GRANULARITY.name
    return granularity if item.multiples == 1 else f"{item.multiples} {granularity}s"
