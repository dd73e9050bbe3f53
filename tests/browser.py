"""A real headless browser for the tests: Debian's ``chromium`` driven by Playwright.

Why a real browser: CORS preflights, the WebSocket ``Origin`` header and what a page
may fetch are decided by the browser, not by any client library; GraphiQL runs in
one. Nothing is downloaded: Playwright drives the system binary
(``EDUMATRIX_TEST_CHROMIUM``, default ``/usr/bin/chromium``; Debian's ``chromium``
package). Without it the browser tests skip and say so.

Every request the page makes is recorded; requests to anything but loopback are
aborted (the tests run offline), and the tests assert none were attempted.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser, Page, Route, async_playwright

from tests.services import missing

LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def chromium_path() -> str:
    """The browser binary, or skip the test with what is missing."""
    path = os.environ.get("EDUMATRIX_TEST_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists():
        missing(f"no browser at {path}: install Debian's chromium (apt-get install chromium)")
    return path


@dataclass
class Requests:
    """What a page asked for: every URL, and those that left loopback (aborted)."""

    seen: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield instance
        finally:
            await instance.close()


@asynccontextmanager
async def offline_page(instance: Browser) -> AsyncIterator[tuple[Page, Requests]]:
    """A page in a fresh context whose non-loopback requests are recorded and aborted
    (WebSockets included: Playwright routes their handshakes separately).

    Not for CORS tests: once a route is registered, Playwright answers CORS
    preflights itself with allow-all, so they never reach the server
    (tests/integration/test_cors_browser.py uses an unrouted page instead)."""
    context = await instance.new_context()
    requests = Requests()

    async def route(route: Route) -> None:
        url = route.request.url
        requests.seen.append(url)
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in LOCAL_HOSTS:
            await route.continue_()
        else:
            requests.external.append(url)
            await route.abort()

    await context.route("**/*", route)
    await context.route_web_socket(
        "**/*",
        lambda ws: (
            ws.connect_to_server()
            if urlsplit(ws.url).hostname in LOCAL_HOSTS
            else requests.external.append(ws.url)
        ),
    )
    page = await context.new_page()
    try:
        yield page, requests
    finally:
        await context.close()
