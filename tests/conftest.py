"""Shared fixtures: real services (see tests/services.py) and real server processes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis_cluster import RedisCluster, cluster_binaries
from tests.server import FRESH_POSTGRES, ServerProcess, base_env, stock_only
from tests.services import (
    PostgresProcess,
    RedisProcess,
    ServiceMissing,
    find_postgres,
    find_redis,
    missing,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the stock-only pass (``EDUMATRIX_TEST_FAST_PATHS=off``) every server runs
    without fast paths; tests that assert a fast path was taken have nothing to
    check there (each of them compares against the stock path itself)."""
    if not stock_only():
        return
    skip = pytest.mark.skip(reason="asserts a fast path was taken; this pass runs stock paths")
    for item in items:
        if "fast_paths" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    started: list[RedisProcess] = []
    yield find_redis(started)
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    started: list[PostgresProcess] = []
    yield find_postgres(started)
    for server in started:
        server.stop()


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"emx_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_admin_url, f'CREATE DATABASE "{name}"'))
    base = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    url = f"{base}/{name}"
    FRESH_POSTGRES.add(url)  # ServerProcess.cli may make it from a template
    yield url
    FRESH_POSTGRES.discard(url)
    asyncio.run(_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_prefix() -> str:
    """Keys and channels of one test never meet another test's on a shared Redis."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One embedded-mode server (SQLite + memory bus) with the demo data."""
    workdir = tmp_path_factory.mktemp("embedded")
    server = ServerProcess(workdir, base_env(workdir))
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start server processes with given settings; all are stopped after the test."""
    servers: list[ServerProcess] = []

    def make(**settings: str) -> ServerProcess:
        server = ServerProcess(tmp_path, base_env(tmp_path, **settings))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """One tansu broker per test session; tests isolate themselves by topic names."""
    from tests.kafka_broker import TansuBroker

    broker = TansuBroker().start()
    yield broker.bootstrap
    broker.stop()


# The stock pass proves the fast paths' stand-ins; the bus is not one of them, so
# it runs the cross-process tests on one Redis only.
BUSES = ["redis"] if stock_only() else ["redis", "redis-cluster", "redis-shards"]


def _bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "redis-shards":
        return str(request.getfixturevalue("redis_shards"))
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.cluster_url


@pytest.fixture(params=BUSES)
def bus_url(request: pytest.FixtureRequest) -> str:
    """``EDUMATRIX_REDIS_URL`` for cross-process delivery tests: one Redis, and in
    the first pass a Redis Cluster (sharded Pub/Sub, 3 masters) and a list of two
    independent Redis servers."""
    return _bus_url(request)


@pytest.fixture(params=[b for b in BUSES if b != "redis-shards"])
def state_bus_url(request: pytest.FixtureRequest) -> str:
    """As ``bus_url`` for presence and recovery tests, without the shard list: its
    presence lives on the first shard, a single Redis, and its per-shard recovery
    is tested in process (tests/integration/test_redis_shards_bus.py)."""
    return _bus_url(request)


@pytest.fixture(scope="session")
def redis_shards(redis_url: str) -> Iterator[str]:
    """Two independent Redis servers as one shard list: the shared one and one
    started for this session."""
    extra = RedisProcess().start()
    yield f"{redis_url},{extra.url}"
    extra.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One Redis Cluster (3 masters, 1 replica each) per test session, started on first
    use from the installed redis-server and redis-cli (tests/redis_cluster.py). Without
    them, or older than 7.0, its tests skip and say so (fail under CI). A test that
    kills a node revives it before it ends."""
    try:
        cluster_binaries()
    except ServiceMissing as exc:
        missing(str(exc))
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()
