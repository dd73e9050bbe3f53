"""Unexpected exceptions are masked the same way on both HTTP paths (and the app
freezes its startup objects out of the cyclic GC).

No public input makes a resolver fail unexpectedly, so this test builds the app
in-process with one resolver replaced by one that raises, and runs it (lifespan
included) with Starlette's test client against a migrated SQLite database.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Any

import pytest
import strawberry
import strawberry.schema.schema as strawberry_schema_module
from pydantic import SecretStr

import api.direct
import api.http_fast
import resolvers.institutions
from api.app import create_app
from api.settings import Settings
from db.migrate import upgrade
from schema.context import Context
from schema.directory import Me
from tests.server import SECRET, token

with warnings.catch_warnings():  # it works with httpx; it only prefers a newer package
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


async def boom(info: strawberry.Info[Context]) -> Me:
    raise RuntimeError("connection string with a password in it")


def ask(tmp_path: Path, fast: bool) -> tuple[int, Any]:
    settings = Settings(
        data_dir=tmp_path / ("fast" if fast else "plain"),
        jwt_secret=SecretStr(SECRET),
        http_fast_path=fast,
    )
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        # Startup objects are frozen out of the cyclic GC (api/app.py); undo it so
        # the rest of this test process is collected as usual.
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        response = client.post(
            "/graphql",
            json={"query": "query Who { me { id } }"},
            headers={"Authorization": f"Bearer {token('nw-ada')}"},
        )
        metrics = client.get("/metrics").text
    # "query Who { me { id } }" has the one-root-field shape api.direct executes.
    assert ('edumatrix_http_operations_total{path="direct"} 1.0' in metrics) is fast
    return response.status_code, response.json()


def test_unexpected_errors_are_masked_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolvers.institutions, "me", boom)
    fast, plain = ask(tmp_path, fast=True), ask(tmp_path, fast=False)
    assert fast == plain
    assert fast == (
        200,
        {
            "data": None,
            "errors": [
                {"message": "Unexpected error.", "locations": [{"line": 1, "column": 13}],
                 "path": ["me"], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
            ],
        },
    )  # fmt: skip


def test_failures_outside_resolvers_are_masked_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_execute(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("executor state with secrets in it")

    monkeypatch.setattr(strawberry_schema_module, "execute", broken_execute)
    monkeypatch.setattr(api.http_fast, "execute", broken_execute)
    # The one-root-field query below is executed by api.direct on the fast path.
    monkeypatch.setattr(api.direct.DirectOperation, "execute", broken_execute)
    fast, plain = ask(tmp_path, fast=True), ask(tmp_path, fast=False)
    # Strawberry's MaskErrors does not see such an error (it escapes the operation);
    # GraphQLView.process_result masks it on that path too.
    unexpected = {"message": "Unexpected error.", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
    assert fast == plain == (200, {"data": None, "errors": [unexpected]})
