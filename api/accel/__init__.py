"""Every fast path that stands in for a library's internals, and whether it is on.

Why one registry: the fast paths (``api/http_fast.py``, ``api/direct.py``,
``api/mux_handler.py``, ``api/rawsocket.py``, ``api/wsprotocol.py``, …) are measured
and worth keeping, but each leans on names a library does not promise to keep. A
path is enabled only when every condition it was tested under holds, decided once
at startup:

- the installed version of each library it touches lies in the window the suite
  ran it against (``FastPath.windows``; ``make test-latest`` probes the top);
- its module imports (private names are imported there and nowhere else, so a
  renamed internal turns the path off instead of breaking the server);
- the paths it builds on are on (``requires``);
- for paths that replay the schema's extensions by hand, the schema has no
  extension they do not know (``STOCK_EXTENSIONS``): an extension added later runs
  on the stock path until its fast path learns it;
- ``EDUMATRIX_FAST_PATHS`` is true and the path is not listed in
  ``EDUMATRIX_FAST_PATHS_OFF``.

Off means the stock library path, which gives the same answers (the suite runs
both ways). The decision is logged once (``server.fast_paths``) and exported as
``edumatrix_accel_enabled{path}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from prometheus_client import CollectorRegistry, Gauge

__all__ = [
    "NAMES",
    "PATHS",
    "STOCK_EXTENSIONS",
    "Decision",
    "FastPath",
    "decide",
    "installed_version",
]

# The extensions schema.build installs, each of which the paths with
# ``replays_extensions`` reproduce by hand (parse/validation caches and limits in
# api.plan.Planner, masking with schema.errors.masked, events with
# schema.event_extension.emit_operation_events).
STOCK_EXTENSIONS = frozenset(
    {
        "strawberry.extensions.add_validation_rules.AddValidationRules",
        "strawberry.extensions.max_tokens.MaxTokensLimiter",
        "schema.parsing.ParseCache",
        "strawberry.extensions.validation_cache.ValidationCache",
        "schema.build.MaskUnexpected",  # Strawberry's MaskErrors with schema.errors.masked
        "schema.event_extension.EmitEvents",
    }
)


@dataclass(frozen=True, slots=True)
class FastPath:
    name: str
    modules: tuple[str, ...]  # ours, imported only to check that they import
    stands_in_for: str
    windows: Mapping[str, str]  # distribution -> specifier the suite ran it with
    requires: tuple[str, ...] = ()
    replays_extensions: bool = False


_STRAWBERRY = "strawberry-graphql"
_WINDOW_STRAWBERRY = ">=0.341,<0.342"
_WINDOW_GRAPHQL = ">=3.3.2,<3.4"
_WINDOW_UVICORN = ">=0.35,<0.56"
_WINDOW_STARLETTE = ">=1.0,<2"

PATHS: tuple[FastPath, ...] = (
    FastPath(
        "inputs",
        ("schema.inputs",),
        "Strawberry's convert_argument walk for input objects",
        {_STRAWBERRY: _WINDOW_STRAWBERRY},
    ),
    FastPath(
        "http",
        ("api.http_fast",),
        "Strawberry's HTTP view for valid POST queries and mutations",
        {_STRAWBERRY: _WINDOW_STRAWBERRY, "graphql-core": _WINDOW_GRAPHQL},
        replays_extensions=True,
    ),
    FastPath(
        "direct",
        ("api.direct", "api.resolver_plan"),
        "graphql-core's executor and Strawberry's resolve wrapper for one-field operations",
        {_STRAWBERRY: _WINDOW_STRAWBERRY, "graphql-core": _WINDOW_GRAPHQL},
        requires=("http",),
        replays_extensions=True,
    ),
    FastPath(
        "multiplex",
        ("api.mux_handler", "api.multiplex"),
        "Strawberry's per-subscriber schema.subscribe for `channel` subscriptions",
        {_STRAWBERRY: _WINDOW_STRAWBERRY, "graphql-core": _WINDOW_GRAPHQL},
        replays_extensions=True,
    ),
    FastPath(
        "rawsocket",
        ("api.rawsocket",),
        "uvicorn's ASGI send for multiplexed frames (uvicorn's websockets-sansio only)",
        {"uvicorn": _WINDOW_UVICORN},
        requires=("multiplex",),
    ),
    FastPath(
        "wsprotocol",
        ("api.wsprotocol",),
        "uvicorn's websockets-sansio protocol's per-connection containers",
        {"uvicorn": _WINDOW_UVICORN},
    ),
    FastPath(
        "ratelimit_memory",
        ("api.admission",),
        "the per-hit expiry sweep of `limits`' memory storage (embedded-mode rate limits)",
        {"limits": ">=5.0,<6"},
    ),
    FastPath(
        "lane",
        ("api.lane",),
        "Starlette's router and exception middleware for /graphql",
        {"starlette": _WINDOW_STARLETTE},
    ),
)
NAMES = frozenset(p.name for p in PATHS)


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _extension_name(extension: object) -> str:
    """The dotted name of an extension given as a class, an instance or a partial."""
    while isinstance(extension, partial):
        extension = extension.func
    cls = extension if isinstance(extension, type) else type(extension)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(slots=True)
class Decision:
    """Which paths are on, and for each one that is off, why."""

    on: frozenset[str]
    why_off: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.on

    def export(self, registry: CollectorRegistry) -> None:
        gauge = Gauge(
            "edumatrix_accel_enabled",
            "1 when the fast path is on, 0 when the stock library path runs (api/accel)",
            ["path"],
            registry=registry,
        )
        for path in PATHS:
            gauge.labels(path=path.name).set(1 if path.name in self.on else 0)

    def summary(self) -> dict[str, str]:
        return {p.name: "on" if p.name in self.on else self.why_off[p.name] for p in PATHS}


def decide(
    *,
    enabled: bool = True,
    off: Iterable[str] = (),
    extensions: Iterable[object] | None = None,
    versions: Callable[[str], str | None] = installed_version,
    paths: Iterable[FastPath] = PATHS,
) -> Decision:
    """Decide every path once. ``extensions`` are the schema's (None: not known
    yet, as in the CLI before the app exists; such paths are judged later)."""
    unknown = sorted({_extension_name(e) for e in extensions or ()} - STOCK_EXTENSIONS)
    off = set(off)
    on: set[str] = set()
    why: dict[str, str] = {}
    for path in paths:
        reason = _reason(path, enabled, off, on, unknown, versions)
        if reason is None:
            on.add(path.name)
        else:
            why[path.name] = reason
    return Decision(frozenset(on), why)


def _reason(
    path: FastPath,
    enabled: bool,
    off: set[str],
    on: set[str],
    unknown: list[str],
    versions: Callable[[str], str | None],
) -> str | None:
    """Why ``path`` must stay off, or None; cheapest checks first, import last."""
    if not enabled:
        return "EDUMATRIX_FAST_PATHS=false"
    if path.name in off:
        return "listed in EDUMATRIX_FAST_PATHS_OFF"
    outside = _outside_window(path, versions)
    if outside:
        return outside
    for required in path.requires:
        if required not in on:
            return f"needs {required}, which is off"
    if path.replays_extensions and unknown:
        return f"schema extension {unknown[0]} is not replayed by this path"
    return _import_failure(path)


def _outside_window(path: FastPath, versions: Callable[[str], str | None]) -> str | None:
    for distribution, window in path.windows.items():
        found = versions(distribution)
        try:
            inside = found is not None and Version(found) in SpecifierSet(window)
        except InvalidVersion:
            inside = False
        if not inside:
            return f"{distribution} {found or 'missing'} is outside the tested window {window}"
    return None


def _import_failure(path: FastPath) -> str | None:
    for module in path.modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a private name moved: the stock path serves
            return f"{module} does not import: {exc}"
    return None
