"""JSON on the wire: one encoder for every response body and WebSocket message,
and the check that keeps unstorable strings out of requests.

Strawberry's ``encode_json`` builds a ``JSONEncoder`` per call (compact
separators); one shared encoder gives the same bytes without that cost, which was
a few percent of a handshake (every ``connection_ack`` and ``next`` goes through it).
"""

from __future__ import annotations

import json
import re

COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


UNSAFE_TEXT = "strings must not contain NUL characters or unpaired UTF-16 surrogates"
# JSON escapes that can decode to a NUL or a surrogate: a cheap test on raw bodies,
# so only those (rare) bodies are walked string by string.
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


_SUSPECT_TEXT = re.compile(_SUSPECT.pattern.decode())


def suspect(raw: bytes | str) -> bool:
    """Cheap pre-check: only a body holding ``\\u0000`` or a surrogate escape needs the walk."""
    if isinstance(raw, str):
        return _SUSPECT_TEXT.search(raw) is not None
    return _SUSPECT.search(raw) is not None


def unsafe_text(value: object) -> bool:
    """Whether a decoded JSON value holds a string no database or encoder takes.

    Why: JSON lets a client send ``\\u0000`` and lone surrogates (``\\ud800``).
    Postgres text refuses NUL, UTF-8 cannot encode a lone surrogate, and either
    surfaced as a masked "Unexpected error." deep in a write. Refusing them where
    requests are decoded gives the client a clear answer and keeps them out of
    every store. Nesting is bounded by the JSON decoder's recursion limit.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(unsafe_text(k) or unsafe_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(unsafe_text(v) for v in value)
    return False
