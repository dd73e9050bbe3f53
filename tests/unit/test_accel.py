"""The fast-path registry: each path is on only inside its tested window, with the
paths it needs, with no extension it does not replay, and when its module imports;
off otherwise, with a reason, and never an error."""

from __future__ import annotations

from functools import partial

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from strawberry.extensions import SchemaExtension

from api.accel import NAMES, PATHS, FastPath, decide, installed_version
from api.settings import Settings
from schema.build import MaskUnexpected
from schema.event_extension import EmitEvents


class Audit(SchemaExtension):
    """An extension a deployment might add: no fast path knows it."""


def test_every_path_is_on_with_the_locked_versions() -> None:
    decision = decide(extensions=[MaskUnexpected, partial(EmitEvents)])
    assert decision.on == NAMES, decision.why_off


def test_the_one_switch_turns_every_path_off() -> None:
    decision = decide(enabled=False)
    assert decision.on == frozenset()
    assert set(decision.why_off.values()) == {"EDUMATRIX_FAST_PATHS=false"}


def test_a_path_turned_off_takes_the_paths_built_on_it_along() -> None:
    decision = decide(off=["http"])
    assert "http" not in decision and "direct" not in decision
    assert decision.why_off["direct"] == "needs http, which is off"
    assert "multiplex" in decision and "inputs" in decision


def test_a_library_outside_its_window_turns_off_only_the_paths_that_touch_it() -> None:
    def versions(distribution: str) -> str | None:
        return (
            "0.400.0" if distribution == "strawberry-graphql" else installed_version(distribution)
        )

    decision = decide(versions=versions)
    assert decision.on == {"wsprotocol", "lane", "ratelimit_memory"}
    assert "strawberry-graphql 0.400.0 is outside the tested window" in decision.why_off["http"]
    assert decision.why_off["rawsocket"] == "needs multiplex, which is off"


@pytest.mark.parametrize("found", [None, "not-a-version", "0.34.3"])
def test_missing_or_unreadable_versions_are_outside_the_window(found: str | None) -> None:
    def versions(distribution: str) -> str | None:
        return found if distribution == "uvicorn" else installed_version(distribution)

    decision = decide(versions=versions)
    assert "wsprotocol" not in decision and "rawsocket" not in decision
    assert "multiplex" in decision


def test_an_unknown_schema_extension_sends_requests_to_the_stock_path() -> None:
    decision = decide(extensions=[MaskUnexpected, Audit])
    for name in ("http", "direct", "multiplex"):
        assert name not in decision
    assert "tests.unit.test_accel.Audit" in decision.why_off["http"]
    assert "inputs" in decision and "lane" in decision  # they replay no extension


def test_a_module_that_does_not_import_turns_its_path_off() -> None:
    broken = FastPath("broken", ("api.no_such_module",), "nothing", {})
    decision = decide(paths=[broken])
    assert "broken" not in decision
    assert decision.why_off["broken"].startswith("api.no_such_module does not import")


def test_decision_is_exported_per_path() -> None:
    registry = CollectorRegistry()
    decide(off=["lane"]).export(registry)
    for path in PATHS:
        value = registry.get_sample_value("edumatrix_accel_enabled", {"path": path.name})
        assert value == (0.0 if path.name == "lane" else 1.0)


def test_settings_name_the_paths_and_refuse_unknown_ones() -> None:
    settings = Settings(jwt_secret="s" * 40, fast_paths_off="multiplex, lane")
    assert settings.fast_paths_off == ["multiplex", "lane"]
    assert settings.decide_fast_paths().on == NAMES - {"multiplex", "rawsocket", "lane"}
    assert "http" not in Settings(jwt_secret="s" * 40, http_fast_path=False).decide_fast_paths()
    with pytest.raises(ValidationError, match="unknown fast paths"):
        Settings(jwt_secret="s" * 40, fast_paths_off="warp")
