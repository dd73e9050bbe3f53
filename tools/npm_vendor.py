"""Copy browser files from a pinned npm install into the package, with a manifest.

Shared by ``tools/graphiql/vendor.py`` and ``tools/dashboard/vendor.py`` (``make
graphiql-assets``, ``make dashboard-assets``): each names its pinned packages' files
and where they go. Writes ``<target>/<package>-<version>/<file>`` and
``manifest.json`` (package, version, license, sha256 and size of every file, and how
the page loads it), so the server, and a pip-installed copy of it, need neither npm
nor a network. The copies are byte for byte what npm installed: anyone can check
them against the registry.

Standard library only; the versions come from what ``npm ci`` installed, and must be
the exact ones ``package.json`` pins.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")


def directory(package: str, version: str) -> str:
    """``@graphiql/plugin-explorer`` 3.2.5 -> ``graphiql-plugin-explorer-3.2.5``."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}"


@dataclass(frozen=True)
class Vendoring:
    script: str  # e.g. "tools/graphiql/vendor.py", named in errors and the manifest
    make_target: str  # e.g. "graphiql-assets"
    page: str  # the page that loads the files, e.g. "api/graphiql.html"
    here: Path  # the directory with package.json and node_modules
    target: Path
    # (package, file in the package, how the page loads it), in load order.
    files: list[tuple[str, str, str | None]]

    def fail(self, message: str) -> None:
        sys.exit(f"{self.script}: {message}")

    def _entry(
        self, package: str, version: str, license_: str, source: Path, load: str | None
    ) -> dict[str, object]:
        data = source.read_bytes()
        path = f"{directory(package, version)}/{source.name}"
        destination = self.target / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
        return {
            "path": path,
            "package": package,
            "version": version,
            "license": license_,
            "source": source.relative_to(self.here / "node_modules" / package).as_posix(),
            "load": load,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def run(self) -> None:
        modules = self.here / "node_modules"
        pins: dict[str, str] = json.loads((self.here / "package.json").read_text())["dependencies"]
        if not modules.is_dir():
            prefix = self.script.rsplit("/", 1)[0]
            self.fail(f"no node_modules: run `npm ci --prefix {prefix}` first")
        packages: dict[str, dict[str, str]] = {}
        for package in dict.fromkeys(name for name, _, _ in self.files):
            meta = json.loads((modules / package / "package.json").read_text())
            if pins.get(package) != meta["version"]:
                self.fail(
                    f"{package} {meta['version']} is installed, package.json pins "
                    f"{pins.get(package)}"
                )
            packages[package] = {"version": meta["version"], "license": meta.get("license", "")}

        if self.target.exists():
            shutil.rmtree(self.target)  # files of versions no longer pinned go too
        files = []
        for package, name, load in self.files:
            info = packages[package]
            source = modules / package / name
            files.append(self._entry(package, info["version"], info["license"], source, load))
        for package, info in packages.items():
            for name in LICENSE_NAMES:
                source = modules / package / name
                if source.is_file():
                    files.append(
                        self._entry(package, info["version"], info["license"], source, None)
                    )
                    break
        manifest = {
            "about": f"Written by {self.script} (make {self.make_target}); do not edit. "
            f"'load' is how {self.page} loads a file, in this order; null: not loaded.",
            "packages": {package: info["version"] for package, info in packages.items()},
            "files": files,
        }
        (self.target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        total = sum(int(f["bytes"]) for f in files)  # type: ignore[call-overload]
        print(f"vendored {len(files)} files ({total:,} bytes) into {self.target}")
