"""The envelope every channel message travels in.

Wire form (one JSON object, what Redis stores and publishes)::

    {"offset": 42, "epoch": "k3f9...", "publishedAt": 1764246000123,
     "channel": "institution:northwood", "kind": "announcement", "data": {...}}

``offset`` grows by one per channel; ``epoch`` names one continuous history of that
channel and changes when the history is lost, so ``(offset, epoch)`` is a position a
client can resume from. The sequencer (Redis script or memory log) prepends the three
position fields to a ``body`` built once here, which is why :func:`encode_body`
returns the object *without* its opening brace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class EnvelopeError(ValueError):
    """A message on the bus is not a valid envelope (a bug or a foreign publisher)."""


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Envelope:
    offset: int
    epoch: str
    channel: str
    kind: str
    data: Mapping[str, Any]
    published_at_ms: int

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)

    @property
    def published_at(self) -> datetime:
        return datetime.fromtimestamp(self.published_at_ms / 1000, UTC)


def encode_body(channel: str, kind: str, data: Mapping[str, Any]) -> str:
    """The envelope's non-positional fields, as a JSON object missing its ``{``."""
    return _BODY.encode({"channel": channel, "kind": kind, "data": data})[1:]


def assemble(offset: int, epoch: str, published_at_ms: int, body: str) -> str:
    """Mirror of the Redis publish script, for the in-memory sequencer."""
    return f'{{"offset":{offset},"epoch":"{epoch}","publishedAt":{published_at_ms},{body}'


def decode(raw: str | bytes) -> Envelope:
    try:
        obj = json.loads(raw)
        return Envelope(
            offset=int(obj["offset"]),
            epoch=str(obj["epoch"]),
            channel=str(obj["channel"]),
            kind=str(obj["kind"]),
            data=obj["data"],
            published_at_ms=int(obj["publishedAt"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise EnvelopeError(f"not an envelope: {raw[:200]!r}") from exc


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} in an envelope")


# One encoder for every publish: json.dumps with non-default arguments builds one
# per call.
_BODY = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)
