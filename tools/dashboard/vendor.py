"""Copy the dashboard's browser libraries from tools/dashboard/node_modules into the package.

Run by ``make dashboard-assets`` after ``npm ci`` (docs/dashboard.md). Writes
``api/static/dashboard/vendor/<package>-<version>/<file>`` and ``manifest.json``
(package, version, license, sha256 and size of every file, and how the page loads
it), so the server, and a pip-installed copy of it, need neither npm nor a network.
The copies are byte for byte what npm installed. The same scheme as
tools/graphiql/vendor.py, for the dashboard's own pins.

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
TARGET = HERE.parent.parent / "api" / "static" / "dashboard" / "vendor"

# (package, file in the package, how the page loads it), in load order. graphql-ws's
# UMD build defines window.graphqlWs and needs no `graphql` at run time (only its
# types do); uPlot's IIFE build defines window.uPlot.
FILES: list[tuple[str, str, str | None]] = [
    ("uplot", "dist/uPlot.min.css", "style"),
    ("graphql-ws", "umd/graphql-ws.min.js", "script"),
    ("uplot", "dist/uPlot.iife.min.js", "script"),
]
LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")


def fail(message: str) -> None:
    sys.exit(f"tools/dashboard/vendor.py: {message}")


def directory(package: str, version: str) -> str:
    """``graphql-ws`` 6.4.2 -> ``graphql-ws-6.4.2``."""
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
        fail("no node_modules: run `npm ci --prefix tools/dashboard` first")
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
        "about": "Written by tools/dashboard/vendor.py (make dashboard-assets); do not edit. "
        "'load' is how api/dashboard.html loads a file, in this order; null: not loaded.",
        "packages": {package: info["version"] for package, info in packages.items()},
        "files": files,
    }
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(len((TARGET / str(f["path"])).read_bytes()) for f in files)
    print(f"vendored {len(files)} files ({total:,} bytes) into {TARGET}")


if __name__ == "__main__":
    main()
