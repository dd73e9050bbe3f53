"""Copy the dashboard's browser libraries from tools/dashboard/node_modules into the package.

Run by ``make dashboard-assets`` after ``npm ci`` (docs/dashboard.md). Writes
``api/static/dashboard/vendor/<package>-<version>/<file>`` and ``manifest.json``
(package, version, license, sha256 and size of every file, and how the page loads
it), so the server, and a pip-installed copy of it, need neither npm nor a network.
The copies are byte for byte what npm installed (tools/npm_vendor.py does the
copying, for GraphiQL too).

Standard library only; the versions come from what ``npm ci`` installed, and must be
the exact ones ``package.json`` pins.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tools/npm_vendor.py, run as a script

from npm_vendor import Vendoring  # noqa: E402

# (package, file in the package, how the page loads it), in load order. graphql-ws's
# UMD build defines window.graphqlWs and needs no `graphql` at run time (only its
# types do); uPlot's IIFE build defines window.uPlot.
FILES: list[tuple[str, str, str | None]] = [
    ("uplot", "dist/uPlot.min.css", "style"),
    ("graphql-ws", "umd/graphql-ws.min.js", "script"),
    ("uplot", "dist/uPlot.iife.min.js", "script"),
]


if __name__ == "__main__":
    Vendoring(
        script="tools/dashboard/vendor.py",
        make_target="dashboard-assets",
        page="api/dashboard.html",
        here=HERE,
        target=HERE.parent.parent / "api" / "static" / "dashboard" / "vendor",
        files=FILES,
    ).run()
