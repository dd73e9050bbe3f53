"""GraphiQL served by this server alone: our page and the vendored browser files.

Strawberry's own page loads React, GraphiQL and the explorer plugin from a public
CDN, so on a network without Internet access it never gets past "Loading...". Ours
(``api/graphiql.html``) loads the same kind of files from ``ASSETS_PATH``, copied
from pinned npm packages into ``api/static/graphiql`` with a manifest of their
sha256 (``make graphiql-assets``; docs/graphiql.md). The page is rendered once, at
startup, from the manifest; every tag carries the file's hash as its ``integrity``.

Headers (the bearer token) stay in the open page unless
``EDUMATRIX_GRAPHIQL_PERSIST_HEADERS`` opts in to GraphiQL's localStorage.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

ASSETS_PATH = "/graphiql/assets"
ASSETS_DIR = Path(__file__).resolve().parent / "static" / "graphiql"
PAGE = Path(__file__).resolve().parent / "graphiql.html"
# Every vendored file's path names its package version, so a URL never changes
# content: browsers may keep it for a year without asking again.
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    path: str  # under ASSETS_DIR and ASSETS_PATH
    load: str | None  # "script", "style", or None (a license, not loaded)
    sha256: str  # hex

    @property
    def integrity(self) -> str:
        """The hash as a Subresource Integrity value (``sha256-<base64>``)."""
        return "sha256-" + base64.b64encode(bytes.fromhex(self.sha256)).decode()


def read_manifest(directory: Path = ASSETS_DIR) -> list[Asset]:
    """The vendored files, in the order the page loads them."""
    manifest: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    return [Asset(f["path"], f["load"], f["sha256"]) for f in manifest["files"]]


def render_page(assets: list[Asset], *, persist_headers: bool, prefix: str = ASSETS_PATH) -> str:
    """The page with one tag per loaded asset; fails on a template without its markers."""
    styles = [
        f'<link rel="stylesheet" href="{html.escape(f"{prefix}/{a.path}")}" '
        f'integrity="{a.integrity}" />'
        for a in assets
        if a.load == "style"
    ]
    scripts = [
        f'<script src="{html.escape(f"{prefix}/{a.path}")}" integrity="{a.integrity}"></script>'
        for a in assets
        if a.load == "script"
    ]
    page = PAGE.read_text()
    for marker, value in (
        ("<!-- styles -->", "\n    ".join(styles)),
        ("<!-- scripts -->", "\n    ".join(scripts)),
        ("<!-- settings -->", json.dumps({"persistHeaders": persist_headers})),
    ):
        if page.count(marker) != 1:
            raise RuntimeError(f"{PAGE} must hold {marker} exactly once")
        page = page.replace(marker, value)
    return page


class _Immutable(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        if response.status_code == 200:
            response.headers["cache-control"] = IMMUTABLE
        return response


class GraphiQLPage:
    """The page (rendered once) and the app that serves the files it loads."""

    def __init__(self, *, persist_headers: bool, directory: Path = ASSETS_DIR) -> None:
        self.directory = directory
        self.html = render_page(read_manifest(directory), persist_headers=persist_headers)

    def response(self, request: Request) -> Response:
        # The page itself is small and names the versions it loads: never cached, so
        # an upgrade is seen on the next load.
        return HTMLResponse(self.html, headers={"cache-control": "no-cache"})

    def assets(self) -> ASGIApp:
        """Mount at ``ASSETS_PATH``. graphiql.min.js is 3.5 MB, 0.7 MB gzipped; level
        6 gets within 1% of the default 9 in half the CPU (~0.1 s for the whole file,
        a few ms per 64 KB chunk on the event loop, once per browser thanks to the
        cache headers)."""
        files = _Immutable(directory=self.directory)
        return GZipMiddleware(files, minimum_size=1024, compresslevel=6)
