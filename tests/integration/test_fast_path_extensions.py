"""A schema extension a deployment adds runs on every request, fast paths on or off.

The fast paths replay the stock extensions (caches, limits, masking, events) by
hand and cannot know one added later, so ``api/accel`` leaves such a schema to
Strawberry's own paths. Before that rule, an extension added to the schema ran
``on_execute`` 0 times for a POST and ``on_operation`` 0 times for a multiplexed
subscription. Built in-process (the extension is Python), run with Starlette's
test client, lifespan included, against a migrated SQLite database with the demo
directory.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from strawberry.extensions import SchemaExtension

from api.app import create_app
from api.settings import Settings
from db.engine import create_engine, make_sessionmaker
from db.migrate import upgrade
from db.seed import seed_demo
from tests.server import SECRET, token

with warnings.catch_warnings():  # it works with httpx; it only prefers a newer package
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PUBLISH = (
    "mutation { publishAnnouncement(input: {channel: "
    '"institution:northwood:classroom:nw-math-101", title: "Quiz", body: "Friday"}) '
    "{ id title } }"
)
SUBSCRIBE = (
    'subscription { channel(name: "institution:northwood:classroom:nw-math-101") '
    "{ offset kind announcement { title } } }"
)
calls: Counter[str] = Counter()


class Counting(SchemaExtension):
    """Counts the hooks Strawberry runs; stands for an audit or tracing extension."""

    def on_operation(self) -> Iterator[None]:
        calls["on_operation"] += 1
        yield

    def on_execute(self) -> Iterator[None]:
        calls["on_execute"] += 1
        yield


def _settings(tmp_path: Path, fast: bool) -> Settings:
    settings = Settings(
        data_dir=tmp_path / ("fast" if fast else "stock"),
        jwt_secret=SecretStr(SECRET),
        fast_paths=fast,
    )
    upgrade(settings.resolved_database_url)

    async def seed() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await seed_demo(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return settings


def run(tmp_path: Path, *, fast: bool, extensions: list[Any]) -> tuple[Counter[str], str, Any]:
    """One POST and one subscription that receives one message; the hooks counted,
    the metrics text while subscribed, and the message."""
    calls.clear()
    settings = _settings(tmp_path, fast)
    teacher = {"Authorization": f"Bearer {token('nw-ada')}"}
    with TestClient(create_app(settings, extensions=extensions)) as client:
        gc.unfreeze()  # the app froze its startup objects; let this process collect
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            ws.send_json(
                {"type": "connection_init", "payload": {"authorization": teacher["Authorization"]}}
            )
            assert ws.receive_json()["type"] == "connection_ack"
            ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE}})
            posted = client.post("/graphql", json={"query": PUBLISH}, headers=teacher)
            assert posted.status_code == 200, posted.text
            assert "errors" not in posted.json(), posted.json()
            message = ws.receive_json()
            metrics = client.get("/metrics").text  # while the subscription is live
            ws.send_json({"id": "1", "type": "complete"})
    return Counter(calls), metrics, message


@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths-on", "stock"])
def test_an_added_extension_runs_for_posts_and_subscriptions(tmp_path: Path, fast: bool) -> None:
    counted, metrics, message = run(tmp_path, fast=fast, extensions=[Counting])
    # One POST (operation + execute) and one subscription (operation + execute).
    assert counted == Counter({"on_operation": 2, "on_execute": 2})
    assert message["type"] == "next"
    assert message["payload"]["data"]["channel"]["announcement"] == {"title": "Quiz"}
    for path in ("http", "direct", "multiplex"):
        assert f'edumatrix_accel_enabled{{path="{path}"}} 0.0' in metrics
    assert 'edumatrix_http_operations_total{path="strawberry"} 1.0' in metrics
    assert "edumatrix_multiplex_groups 0.0" in metrics


def test_without_it_the_same_requests_take_the_fast_paths(tmp_path: Path) -> None:
    """The control: the requests above are ones the fast paths do serve."""
    counted, metrics, message = run(tmp_path, fast=True, extensions=[])
    assert counted == Counter()
    assert message["payload"]["data"]["channel"]["announcement"] == {"title": "Quiz"}
    assert 'edumatrix_accel_enabled{path="multiplex"} 1.0' in metrics
    assert 'edumatrix_http_operations_total{path="direct"} 1.0' in metrics
    assert "edumatrix_multiplex_groups 1.0" in metrics
