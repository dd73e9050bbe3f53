"""The live admin dashboard at ``/dashboard``: one static page, served by this server alone.

The page (``api/dashboard.html``), its own script and style
(``api/static/dashboard/app/``) and two vendored browser libraries (graphql-ws's
UMD build and uPlot, copied from pinned npm packages into
``api/static/dashboard/vendor`` with a sha256 manifest by ``make dashboard-assets``)
are all there is: no build step, no outside URL. The page signs in with a pasted
token (kept in ``sessionStorage``), reads over ``POST /graphql`` and stays live over
one graphql-transport-ws socket; what it shows is whatever the API lets that token
see (docs/dashboard.md).

The page is rendered once, at startup: every tag carries its file's hash as
``integrity``, and a Content-Security-Policy keeps it to this origin.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path
from typing import Any

from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from api.graphiql import IMMUTABLE, Asset, read_manifest

PATH = "/dashboard"
ASSETS_PATH = "/dashboard/assets"  # vendored libraries: immutable, versioned paths
APP_PATH = "/dashboard/app"  # the page's own script and style: revalidated
HERE = Path(__file__).resolve().parent
VENDOR_DIR = HERE / "static" / "dashboard" / "vendor"
APP_DIR = HERE / "static" / "dashboard" / "app"
PAGE = HERE / "dashboard.html"
# The page's own files, in load order (style first, then the script).
APP_FILES = (("dashboard.css", "style"), ("dashboard.js", "script"))
# Same origin only. `connect-src 'self'` covers the page's ws:/wss: twin (CSP Level
# 3, which current browsers implement). uPlot sizes its elements through
# element.style, which CSP does not restrict.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def app_assets(directory: Path = APP_DIR) -> list[Asset]:
    """The page's own files with their current hashes (they are not versioned)."""
    return [
        Asset(name, load, hashlib.sha256((directory / name).read_bytes()).hexdigest())
        for name, load in APP_FILES
    ]


def _tag(asset: Asset, url: str) -> str:
    href = html.escape(url)
    if asset.load == "style":
        return f'<link rel="stylesheet" href="{href}" integrity="{asset.integrity}" />'
    return f'<script src="{href}" integrity="{asset.integrity}" defer></script>'


def render_page(vendored: list[Asset], own: list[Asset]) -> str:
    """The page with one tag per file: vendored styles, our style, vendored scripts,
    our script (``defer`` keeps that order). Fails on a template without its markers."""
    loaded = [a for a in vendored if a.load is not None]
    # Our files' URLs carry a prefix of their hash, so a changed file is a new URL.
    urls = {a.path: f"{ASSETS_PATH}/{a.path}" for a in loaded}
    urls |= {a.path: f"{APP_PATH}/{a.path}?v={a.sha256[:12]}" for a in own}
    ordered = [a for a in loaded if a.load == "style"] + [a for a in own if a.load == "style"]
    ordered += [a for a in loaded if a.load == "script"] + [a for a in own if a.load == "script"]
    styles = [_tag(a, urls[a.path]) for a in ordered if a.load == "style"]
    scripts = [_tag(a, urls[a.path]) for a in ordered if a.load == "script"]
    page = PAGE.read_text()
    for marker, value in (
        ("<!-- styles -->", "\n    ".join(styles)),
        ("<!-- scripts -->", "\n    ".join(scripts)),
    ):
        if page.count(marker) != 1:
            raise RuntimeError(f"{PAGE} must hold {marker} exactly once")
        page = page.replace(marker, value)
    return page


class _Cached(StaticFiles):
    """Static files with one Cache-Control for every 200."""

    def __init__(self, *, directory: Path, cache_control: str) -> None:
        super().__init__(directory=directory)
        self.cache_control = cache_control

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        if response.status_code == 200:
            response.headers["cache-control"] = self.cache_control
        return response


class DashboardPage:
    """The page (rendered once) and the apps that serve the files it loads."""

    def __init__(self, *, vendor_dir: Path = VENDOR_DIR, app_dir: Path = APP_DIR) -> None:
        self.vendor_dir = vendor_dir
        self.app_dir = app_dir
        self.html = render_page(read_manifest(vendor_dir), app_assets(app_dir))

    async def response(self, request: Request) -> Response:
        # Small, and names the versions it loads: never cached, so an upgrade shows
        # on the next load.
        headers = {
            "cache-control": "no-cache",
            "content-security-policy": CSP,
            "referrer-policy": "no-referrer",
            "x-content-type-options": "nosniff",
        }
        return HTMLResponse(self.html, headers=headers)

    def assets(self) -> ASGIApp:
        """Mount at ``ASSETS_PATH``: versioned paths, cached for a year, gzipped."""
        files = _Cached(directory=self.vendor_dir, cache_control=IMMUTABLE)
        return GZipMiddleware(files, minimum_size=1024, compresslevel=6)

    def app_files(self) -> ASGIApp:
        """Mount at ``APP_PATH``: revalidated on every load (ETag), gzipped."""
        files = _Cached(directory=self.app_dir, cache_control="no-cache")
        return GZipMiddleware(files, minimum_size=1024, compresslevel=6)
