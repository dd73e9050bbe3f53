"""The module map stays clean: every module imports on its own, and nothing cycles.

db/ and streams/ use each other: the consumers in streams/ write through db/, and
db/'s repositories speak streams' value types (``Channel``, ``Event``). That is safe
because those value types live in leaf modules, which import no project module:
every dependency between modules then points one way, and no cycle can form. These
tests pin the leaves and check the whole map, statically (ast) and by importing each
module alone in a process that has loaded no other project module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "schema", "resolvers", "streams", "db")
# The value types db/ and streams/ share. They must import no project module.
# Value types db/ and streams/ share, and what they may build on: other leaves only.
SHARED_LEAVES = ("streams.channels", "streams.events", "streams.backoff")
SKIP_IMPORT = {"api.__main__"}  # runs the CLI when imported

Edge = tuple[str, int, bool]  # imported project module, line, under TYPE_CHECKING only


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_nodes(
    nodes: Iterable[ast.AST], type_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``nodes``, module level or inside functions,
    and whether it sits under ``if TYPE_CHECKING:`` (never runs)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.body, True)
            yield from _import_nodes(node.orelse, type_only)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node), type_only)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names an import statement loads (``from a import b`` may load ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _project_imports(module: str) -> list[Edge]:
    """Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, unless they
    are the importing module's own packages (already running when it is imported)."""
    own = {module.rsplit(".", n)[0] for n in range(module.count(".") + 1)}
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    edges: set[Edge] = set()
    for node, type_only in _import_nodes([tree]):
        for target in _targets(module, node):
            parts = target.split(".")
            for name in (".".join(parts[:n]) for n in range(1, len(parts) + 1)):
                if name in MODULES and name not in own:
                    edges.add((name, node.lineno, type_only))
    return sorted(edges)


def _third_party() -> list[str]:
    """Libraries the project imports at run time, to load once before forking."""
    names: set[str] = set()
    for module in MODULES:
        for node, type_only in _import_nodes([ast.parse(MODULES[module].read_text())]):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names if not type_only)
            elif not type_only and not node.level and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in {*PACKAGES, *sys.stdlib_module_names})


# Runs in a fresh interpreter: load the third-party libraries (they take no part in
# project cycles), check that no project module came with them, then fork one
# process per project module and import just that module there.
_IMPORT_ALONE = r"""
import importlib, json, multiprocessing, sys, traceback

spec = json.loads(sys.argv[1])
project = tuple(spec["packages"])

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in project)

def import_alone(name):
    try:
        importlib.import_module(name)
    except BaseException:
        return name, traceback.format_exc(limit=-3).strip(), loaded()
    return name, None, loaded()

if __name__ == "__main__":
    for library in spec["third_party"]:
        try:
            importlib.import_module(library)
        except Exception:
            pass  # the module that needs it reports the failure
    if loaded():
        sys.exit(f"preloading a library imported project modules: {loaded()}")
    with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
        results = pool.map(import_alone, spec["modules"], chunksize=1)
    print(json.dumps({name: [error, modules] for name, error, modules in results}))
"""


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, tuple[str | None, list[str]]]:
    """Per module: the error importing it alone (or None), and the project modules
    that import loaded."""
    spec = {
        "packages": PACKAGES,
        "modules": sorted(set(MODULES) - SKIP_IMPORT),
        "third_party": _third_party(),
    }
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {name: (error, modules) for name, (error, modules) in json.loads(done.stdout).items()}


def test_every_module_imports_on_its_own(
    imported_alone: dict[str, tuple[str | None, list[str]]],
) -> None:
    failed = {name: error for name, (error, _) in imported_alone.items() if error}
    assert not failed, "cannot be imported alone (an import cycle?):\n\n" + "\n\n".join(
        f"{name}:\n{error}" for name, error in sorted(failed.items())
    )


@pytest.mark.parametrize("leaf", SHARED_LEAVES)
def test_shared_value_types_are_leaves(
    leaf: str, imported_alone: dict[str, tuple[str | None, list[str]]]
) -> None:
    assert [e for e in _project_imports(leaf) if e[0] not in SHARED_LEAVES] == []
    package = leaf.split(".")[0]
    error, loaded = imported_alone[leaf]
    assert error is None
    assert set(loaded) <= {package, *SHARED_LEAVES}, loaded


def test_schema_root_imports_no_resolvers(
    imported_alone: dict[str, tuple[str | None, list[str]]],
) -> None:
    # The Schema builder (which imports every resolver) lives in schema/build.py.
    assert [e for e in _project_imports("schema") if e[0].startswith("resolvers")] == []
    error, loaded = imported_alone["schema"]
    assert error is None
    assert [m for m in loaded if m.split(".")[0] == "resolvers"] == []


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_modules() -> None:
    """Function-local imports count too: they defer a dependency, not remove it.
    Imports under ``TYPE_CHECKING`` never run, so they are left out."""
    graph = {
        module: {target for target, _, type_only in _project_imports(module) if not type_only}
        for module in MODULES
    }
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
