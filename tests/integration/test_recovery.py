"""Zero message loss over real WebSockets: resume with `since`, reconnect churn,
slow subscribers, graceful shutdown, killed servers and Redis restarts."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.gqlws import Closed, GraphQLWS
from tests.integration.test_embedded_ws import MATH_101, publish
from tests.server import ServerProcess, token
from tests.services import RedisProcess

Make = Callable[..., ServerProcess]
RESUME = """
subscription($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) { offset epoch kind recovered announcement { title } }
}"""


async def open_channel(
    url: str, since: dict[str, Any] | None = None, user: str = "nw-cy"
) -> GraphQLWS:
    # max_queue=None: a test that stops reading mid-stream must still be able to
    # complete the close handshake (a full client queue stops reading the socket).
    ws = await websockets.connect(url, subprotocols=["graphql-transport-ws"], max_queue=None)  # type: ignore[list-item]
    client = GraphQLWS(ws, "graphql-transport-ws")
    assert (await client.init(token(user)))["type"] == "connection_ack"
    await client.subscribe(RESUME, {"name": MATH_101, "since": since})
    return client


async def events(client: GraphQLWS, n: int, wait: float = 10.0) -> list[dict[str, Any]]:
    return [(await client.next_data(wait))["channel"] for _ in range(n)]


async def ready_status(server: ServerProcess) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{server.url}/readyz")).status_code


async def position_now(server: ServerProcess) -> dict[str, Any]:
    result = await asyncio.to_thread(
        server.graphql,
        "query($n: String!) { channelPosition(name: $n) { offset epoch } }",
        {"n": MATH_101},
        as_user="nw-cy",
    )
    return result["data"]["channelPosition"]  # type: ignore[index,no-any-return]


@pytest.fixture
def cluster(
    make_server: Make, pg_url: str, state_bus_url: str, redis_prefix: str
) -> list[ServerProcess]:
    settings = {
        "database_url": pg_url,
        "redis_url": state_bus_url,
        "redis_prefix": redis_prefix,
        "history_size": "5000",
    }
    first = make_server(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make_server(**settings).start()]


async def test_resubscribe_with_since_gets_exactly_the_missed_then_live(
    embedded_server: ServerProcess,
) -> None:
    client = await open_channel(embedded_server.ws_url)
    await asyncio.sleep(0.2)
    await publish(embedded_server, "nw-ada", MATH_101, "seen")
    seen = (await events(client, 1))[0]
    await client.close()
    titles = [f"missed {i}" for i in range(50)]
    for title in titles:
        await publish(embedded_server, "nw-ada", MATH_101, title)
    since = {"offset": seen["offset"], "epoch": seen["epoch"]}
    client = await open_channel(embedded_server.ws_url, since)
    replayed = await events(client, 50)
    await publish(embedded_server, "nw-ada", MATH_101, "live")
    live = await events(client, 1)
    await client.close()
    assert [e["announcement"]["title"] for e in replayed] == titles
    got = replayed + live
    assert [e["offset"] for e in got] == list(range(seen["offset"] + 1, seen["offset"] + 52))
    assert live[0]["announcement"]["title"] == "live" and all(e["recovered"] for e in got)


async def test_too_old_position_says_not_recovered(make_server: Make) -> None:
    server = make_server(history_size="5")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    for i in range(10):
        await publish(server, "nw-ada", MATH_101, f"m{i}")
    head = await position_now(server)
    client = await open_channel(server.ws_url, {"offset": 1, "epoch": head["epoch"]})
    first = (await events(client, 1))[0]
    await client.close()
    assert first == {
        "offset": head["offset"],
        "epoch": head["epoch"],
        "kind": "reset",
        "recovered": False,
        "announcement": None,
    }


async def test_offsets_stay_contiguous_while_subscribers_reconnect(
    cluster: list[ServerProcess],
) -> None:
    """Three subscribers on B keep dropping and resuming while A publishes."""
    a, b = cluster
    total = 2000

    async def publisher() -> None:
        async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
            headers = {"Authorization": f"Bearer {token('nw-ada')}"}
            query = (
                "mutation($t: String!) { publishAnnouncement(input: {channel: "
                f'"{MATH_101}", title: $t, body: "b"}}) {{ id }} }}'
            )

            async def worker(indices: range) -> None:
                for i in indices:
                    r = await http.post(
                        "/graphql",
                        json={"query": query, "variables": {"t": str(i)}},
                        headers=headers,
                    )
                    assert "errors" not in r.json(), r.text

            await asyncio.gather(*(worker(range(k, total, 4)) for k in range(4)))

    async def subscriber(seed: int) -> list[int]:
        rng = random.Random(seed)
        start = await position_now(b)
        since: dict[str, Any] = dict(start)
        got: list[int] = []
        async with asyncio.timeout(120):
            while not (got and got[-1] >= start["offset"] + total):
                client = await open_channel(b.ws_url, since)
                try:
                    for _ in range(rng.randint(20, 200)):
                        event = (await client.next_data(wait=10))["channel"]
                        assert event["recovered"], event
                        got.append(event["offset"])
                        since = {"offset": event["offset"], "epoch": event["epoch"]}
                        if got[-1] >= start["offset"] + total:
                            break
                finally:
                    await client.close()
        return [o - start["offset"] for o in got]

    subscribers = [asyncio.create_task(subscriber(seed)) for seed in range(3)]
    await asyncio.sleep(0.5)
    await publisher()
    for received in await asyncio.gather(*subscribers):
        dups = [o for i, o in enumerate(received) if i and received[i - 1] >= o]
        assert not dups, f"duplicates or reordering at {dups}"
        assert received == list(range(1, total + 1))


async def test_slow_subscriber_is_cut_off_and_fast_one_gets_everything(make_server: Make) -> None:
    server = make_server(subscriber_queue_size="20")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    fast = await open_channel(server.ws_url)
    # A client that stops reading: tiny kernel buffer, and max_queue=1 makes the
    # client library stop reading the socket, so TCP pushes back on the server
    # (without compression, which would shrink our padding to nothing).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    slow_ws = await websockets.connect(
        server.ws_url,
        sock=sock,
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        max_queue=1,
        compression=None,
    )
    slow = GraphQLWS(slow_ws, "graphql-transport-ws")
    await slow.init(token("nw-cy"))
    # Selecting the 10 kB body makes every message big enough to fill buffers.
    await slow.subscribe(
        "subscription($n: String!) { channel(name: $n) { offset announcement { body } } }",
        {"n": MATH_101},
    )
    await asyncio.sleep(0.3)
    body = "x" * 10_000
    count = 800
    received: list[int] = []

    async def drain_fast() -> None:
        while len(received) < count:
            received.append((await fast.next_data(wait=20))["channel"]["offset"])

    reader = asyncio.create_task(drain_fast())
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        headers = {"Authorization": f"Bearer {token('nw-ada')}"}

        async def worker(n: int) -> None:
            for _ in range(n):
                r = await http.post(
                    "/graphql",
                    json={
                        "query": "mutation($c: String!, $b: String!) { publishAnnouncement("
                        'input: {channel: $c, title: "t", body: $b}) { id } }',
                        "variables": {"c": MATH_101, "b": body},
                    },
                    headers=headers,
                )
                assert "errors" not in r.json()

        await asyncio.gather(*(worker(count // 4) for _ in range(4)))
    await asyncio.wait_for(reader, 30)
    await fast.close()
    assert received == list(range(received[0], received[0] + count))

    metrics = (await asyncio.to_thread(httpx.get, f"{server.url}/metrics")).text
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("edumatrix_slow_subscribers_dropped_total")
    ]
    assert dropped and float(dropped[0].split()[-1]) >= 1
    # The slow client, reading at last, finds its connection closed with 4008.
    with pytest.raises(Closed) as closed:
        async with asyncio.timeout(30):
            while True:
                await slow.recv(wait=30)
    assert closed.value.code == 4008


async def test_sigterm_closes_websockets_with_1001(make_server: Make) -> None:
    server = make_server()
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    client = await open_channel(server.ws_url)
    await asyncio.sleep(0.2)
    server.stop()
    with pytest.raises(Closed) as closed:
        await client.recv(wait=15)
    assert closed.value.code == 1001


async def test_killed_server_restarts_and_clients_resume(cluster: list[ServerProcess]) -> None:
    a, b = cluster
    client = await open_channel(a.ws_url)
    await asyncio.sleep(0.2)
    await publish(b, "nw-ada", MATH_101, "before")
    last = (await events(client, 1))[0]
    a.kill()
    with pytest.raises(Closed):
        await client.recv(wait=10)
    titles = [f"while down {i}" for i in range(20)]
    for title in titles:
        await publish(b, "nw-ada", MATH_101, title)
    a.start()
    client = await open_channel(a.ws_url, {"offset": last["offset"], "epoch": last["epoch"]})
    got = await events(client, 20)
    await client.close()
    assert [e["announcement"]["title"] for e in got] == titles
    assert [e["offset"] for e in got] == list(range(last["offset"] + 1, last["offset"] + 21))


@contextlib.contextmanager
def server_on_own_redis(
    make_server: Make, pg_url: str
) -> Iterator[tuple[RedisProcess, ServerProcess]]:
    """A server with demo data on a Redis this test owns: to stop, pause or empty."""
    redis_server = RedisProcess().start()
    try:
        server = make_server(database_url=pg_url, redis_url=redis_server.url)
        server.cli("migrate")
        server.cli("seed-demo")
        yield redis_server, server.start()
    finally:
        redis_server.stop()


async def test_redis_restart_empty_mid_stream(make_server: Make, pg_url: str) -> None:
    with server_on_own_redis(make_server, pg_url) as (redis_server, server):
        client = await open_channel(server.ws_url)
        await asyncio.sleep(0.2)
        await publish(server, "nw-ada", MATH_101, "one")
        before = (await events(client, 1))[0]
        redis_server.stop()
        assert (await ready_status(server)) == 503
        # A mutation while the bus is down: committed with its message (the outbox),
        # so it is accepted and delivered once Redis is back.
        down = await asyncio.to_thread(
            server.graphql,
            'mutation { publishAnnouncement(input: {channel: "'
            + MATH_101
            + '", title: "while down", body: "b"}) { id } }',
            as_user="nw-ada",
        )
        assert "errors" not in down and down["data"]["publishAnnouncement"]["id"]  # type: ignore[index]
        redis_server.start()
        async with asyncio.timeout(20):
            while (await ready_status(server)) != 200:  # noqa: ASYNC110 - polling a server
                await asyncio.sleep(0.1)
        await publish(server, "nw-ada", MATH_101, "two")
        # Redis lost the channel: a reset to the new epoch's start, then everything
        # of the new epoch, the relayed "while down" included, with no refetch.
        got = await events(client, 3, wait=20)
        reset = got[0]
        assert reset["kind"] == "reset" and reset["epoch"] != before["epoch"], got
        assert reset["offset"] == 0, got
        assert [e["offset"] for e in got[1:]] == [1, 2], got
        assert {e["announcement"]["title"] for e in got[1:]} == {"while down", "two"}
        await client.close()
        stored = await asyncio.to_thread(
            server.graphql,
            "query($c: String!) { announcements(channel: $c, last: 5) { title } }",
            {"c": MATH_101},
            as_user="nw-cy",
        )
        titles = [a["title"] for a in stored["data"]["announcements"]]  # type: ignore[index]
        assert "while down" in titles


def test_sigterm_lets_an_in_flight_mutation_finish(make_server: Make, pg_url: str) -> None:
    """A mutation held up on the bus when SIGTERM arrives still completes.

    CLIENT PAUSE ... WRITE on a Redis this test owns holds the mutation's publish
    script for a few seconds; SIGTERM lands in that window.
    """
    import threading

    import redis as sync_redis

    with server_on_own_redis(make_server, pg_url) as (redis_server, server):
        result: dict[str, Any] = {}

        def mutate() -> None:
            response = httpx.post(
                f"{server.url}/graphql",
                json={
                    "query": 'mutation { publishAnnouncement(input: {channel: "'
                    + MATH_101
                    + '", title: "in flight", body: "b"}) { title } }'
                },
                headers={"Authorization": f"Bearer {token('nw-ada')}"},
                timeout=30,
            )
            result["status"] = response.status_code
            result["body"] = response.json()

        admin = sync_redis.Redis.from_url(redis_server.url)
        admin.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        thread = threading.Thread(target=mutate)
        thread.start()
        thread.join(0.8)
        assert thread.is_alive(), "the mutation should be waiting for Redis"
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        thread.join(30)
        admin.close()
        assert result["status"] == 200
        assert result["body"]["data"] == {"publishAnnouncement": {"title": "in flight"}}
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown completes.
        try:
            code = server.process.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 30 s after SIGTERM:\n{server.log()}")
        assert code in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()


async def _count(pg_url: str, sql: str) -> int:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(sql))).scalar() or 0)
    finally:
        await engine.dispose()


async def test_kill_9_between_commit_and_publish_still_delivers(
    make_server: Make, pg_url: str
) -> None:
    """The publish→bus gap, closed by the outbox: the server commits a message, is
    killed before it reaches Redis, and the message is delivered after the restart,
    exactly once, to a subscriber resuming with ``since``.

    CLIENT PAUSE ... WRITE on a Redis this test owns holds the mutation's publish
    after its commit; kill -9 lands in that window.
    """
    import threading

    import redis as sync_redis

    with server_on_own_redis(make_server, pg_url) as (redis_server, server):
        await publish(server, "nw-ada", MATH_101, "before")
        start = await position_now(server)

        def mutate() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(
                    f"{server.url}/graphql",
                    json={
                        "query": 'mutation { publishAnnouncement(input: {channel: "'
                        + MATH_101
                        + '", title: "in the gap", body: "b"}) { title } }'
                    },
                    headers={"Authorization": f"Bearer {token('nw-ada')}"},
                    timeout=30,
                )

        admin = sync_redis.Redis.from_url(redis_server.url)
        admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        thread = threading.Thread(target=mutate)
        thread.start()
        async with asyncio.timeout(8):
            committed = "SELECT count(*) FROM announcements WHERE title = 'in the gap'"
            while not await _count(pg_url, committed):  # noqa: ASYNC110 - held before the bus
                await asyncio.sleep(0.05)
        server.kill()
        thread.join(10)
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        server.start()
        client = await open_channel(server.ws_url, start)
        try:
            got = await events(client, 1, wait=20)
        except TimeoutError:
            raise AssertionError(server.log()[-3000:]) from None
        await publish(server, "nw-ada", MATH_101, "after")
        got += await events(client, 1)
        await client.close()
        assert [e["announcement"]["title"] for e in got] == ["in the gap", "after"]
        assert [e["offset"] for e in got] == [start["offset"] + 1, start["offset"] + 2]
        async with asyncio.timeout(10):
            left = "SELECT count(*) FROM delivery_outbox"
            while await _count(pg_url, left):  # noqa: ASYNC110 - relayed rows are deleted
                await asyncio.sleep(0.1)
