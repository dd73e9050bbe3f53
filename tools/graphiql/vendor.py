"""Copy GraphiQL's browser files from tools/graphiql/node_modules into the package.

Run by ``make graphiql-assets`` after ``npm ci`` (docs/graphiql.md). Writes
``api/static/graphiql/<package>-<version>/<file>`` and ``manifest.json`` (package,
version, license, sha256 and size of every file, and how the page loads it), so the
server, and a pip-installed copy of it, need neither npm nor a network. The copies
are byte for byte what npm installed: anyone can check them against the registry.

Standard library only; the versions come from what ``npm ci`` installed, and must be
the exact ones ``package.json`` pins.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "node_modules"
TARGET = HERE.parent.parent / "api" / "static" / "graphiql"

# (package, file in the package, how the page loads it), in the order the page loads
# them: React before everything, GraphiQL (which defines window.GraphiQL) before the
# explorer plugin, which reads window.React and window.GraphiQL.React.
FILES: list[tuple[str, str, str | None]] = [
    ("react", "umd/react.production.min.js", "script"),
    ("react-dom", "umd/react-dom.production.min.js", "script"),
    ("graphiql", "graphiql.min.css", "style"),
    ("graphiql", "graphiql.min.js", "script"),
    ("@graphiql/plugin-explorer", "dist/style.css", "style"),
    ("@graphiql/plugin-explorer", "dist/index.umd.js", "script"),
]
LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")


def fail(message: str) -> None:
    sys.exit(f"tools/graphiql/vendor.py: {message}")


def directory(package: str, version: str) -> str:
    """``@graphiql/plugin-explorer`` 3.2.5 -> ``graphiql-plugin-explorer-3.2.5``."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}"


def entry(
    package: str, version: str, license_: str, source: Path, load: str | None
) -> dict[str, object]:
    data = source.read_bytes()
    path = f"{directory(package, version)}/{source.name}"
    destination = TARGET / path
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(data)
    return {
        "path": path,
        "package": package,
        "version": version,
        "license": license_,
        "source": source.relative_to(MODULES / package).as_posix(),
        "load": load,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def main() -> None:
    pins: dict[str, str] = json.loads((HERE / "package.json").read_text())["dependencies"]
    if not MODULES.is_dir():
        fail("no node_modules: run `npm ci --prefix tools/graphiql` first")
    packages: dict[str, dict[str, str]] = {}
    for package in dict.fromkeys(name for name, _, _ in FILES):
        meta = json.loads((MODULES / package / "package.json").read_text())
        if pins.get(package) != meta["version"]:
            fail(f"{package} {meta['version']} is installed, package.json pins {pins.get(package)}")
        packages[package] = {"version": meta["version"], "license": meta.get("license", "")}

    if TARGET.exists():
        shutil.rmtree(TARGET)  # files of versions no longer pinned go too
    files = []
    for package, name, load in FILES:
        info = packages[package]
        files.append(
            entry(package, info["version"], info["license"], MODULES / package / name, load)
        )
    for package, info in packages.items():
        for name in LICENSE_NAMES:
            if (MODULES / package / name).is_file():
                files.append(
                    entry(package, info["version"], info["license"], MODULES / package / name, None)
                )
                break
    manifest = {
        "about": "Written by tools/graphiql/vendor.py (make graphiql-assets); do not edit. "
        "'load' is how api/graphiql.html loads a file, in this order; null: not loaded.",
        "packages": {package: info["version"] for package, info in packages.items()},
        "files": files,
    }
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(len((TARGET / str(f["path"])).read_bytes()) for f in files)
    print(f"vendored {len(files)} files ({total:,} bytes) into {TARGET}")


if __name__ == "__main__":
    main()
