"""Copy GraphiQL's browser files from tools/graphiql/node_modules into the package.

Run by ``make graphiql-assets`` after ``npm ci`` (docs/graphiql.md). Writes
``api/static/graphiql/<package>-<version>/<file>`` and ``manifest.json`` (package,
version, license, sha256 and size of every file, and how the page loads it), so the
server, and a pip-installed copy of it, need neither npm nor a network. The copies
are byte for byte what npm installed: anyone can check them against the registry
(tools/npm_vendor.py does the copying, for the dashboard too).

Standard library only; the versions come from what ``npm ci`` installed, and must be
the exact ones ``package.json`` pins.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tools/npm_vendor.py, run as a script

from npm_vendor import Vendoring  # noqa: E402

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


if __name__ == "__main__":
    Vendoring(
        script="tools/graphiql/vendor.py",
        make_target="graphiql-assets",
        page="api/graphiql.html",
        here=HERE,
        target=HERE.parent.parent / "api" / "static" / "graphiql",
        files=FILES,
    ).run()
