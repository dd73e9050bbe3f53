"""Reading the server's own static pages (GraphiQL, the dashboard) as a browser
would: which files a page loads, and the integrity each must carry."""

from __future__ import annotations

import base64
from html.parser import HTMLParser


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        url = a.get("src") if tag == "script" else a.get("href") if tag == "link" else None
        if url:
            self.found.append((tag, url, a.get("integrity")))


def references(html: str) -> list[tuple[str, str, str | None]]:
    """Every file the page loads: (tag, url, integrity attribute), in page order."""
    parser = _References()
    parser.feed(html)
    return parser.found


def sri(hex_digest: str) -> str:
    """The ``integrity`` value for a file whose sha256 is ``hex_digest``."""
    return "sha256-" + base64.b64encode(bytes.fromhex(hex_digest)).decode()
