"""Cluster mode: Postgres + Redis, several server processes sharing the bus."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, connect
from tests.integration.test_embedded_ws import MATH_101, SUBSCRIBE, publish
from tests.server import ServerProcess, base_env, token

Make = Callable[..., ServerProcess]


@pytest.fixture
def cluster(make_server: Make, pg_url: str, bus_url: str, redis_prefix: str) -> list[ServerProcess]:
    settings = {"database_url": pg_url, "redis_url": bus_url, "redis_prefix": redis_prefix}
    first = make_server(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make_server(**settings).start()]


async def test_mutation_on_one_process_reaches_subscribers_on_another(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    async with (
        connect(b.ws_url, TRANSPORT_WS) as modern,
        connect(b.ws_url, LEGACY_WS) as legacy,
        connect(a.ws_url, TRANSPORT_WS) as local,
    ):
        for client in (modern, legacy, local):
            assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
            await client.subscribe(SUBSCRIBE, {"name": MATH_101})
        await asyncio.sleep(0.3)
        sent = [
            await publish(srv, "nw-ada", MATH_101, f"msg {i}") for i, srv in enumerate([a, b, a])
        ]
        for client in (modern, legacy, local):
            got = [(await client.next_data())["channel"] for _ in sent]
            assert [g["announcement"]["id"] for g in got] == [s["id"] for s in sent]
            offsets = [g["offset"] for g in got]
            assert offsets == list(range(offsets[0], offsets[0] + len(sent)))
            assert len({g["epoch"] for g in got}) == 1


async def test_both_processes_report_ready_and_share_positions(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    await publish(a, "nw-admin", "institution:northwood", "hello")
    query = '{ channelPosition(name: "institution:northwood") { offset epoch } }'
    pa = a.graphql(query, as_user="nw-cy")["data"]
    pb = b.graphql(query, as_user="nw-cy")["data"]
    assert pa == pb and pa["channelPosition"]["offset"] == 1  # type: ignore[index]


def test_cluster_mode_refuses_to_start_without_a_real_secret(tmp_path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    env = base_env(tmp_path, redis_url=redis_url)
    del env["EDUMATRIX_JWT_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "api", "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "EDUMATRIX_JWT_SECRET is required in cluster mode" in result.stderr
    env["EDUMATRIX_JWT_SECRET"] = "changeme"
    result = subprocess.run(
        [sys.executable, "-m", "api", "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0 and "at least 32 bytes" in result.stderr
