"""Unit tests for the wire envelope in streams/envelope.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from streams.envelope import (
    Envelope,
    EnvelopeError,
    Position,
    assemble,
    decode,
    encode_body,
)

DATA = {
    "title": "Rentrée — réunion à 9h ✓",
    "body": "日本語のテキスト 🎓",
    "n": 3,
    "ok": True,
    "none": None,
    "nested": {"list": [1, 2.5, "x"]},
}


def test_round_trip() -> None:
    body = encode_body("institution:northwood", "announcement", DATA)
    raw = assemble(42, "k3f9a0b1", 1_764_246_000_123, body)
    env = decode(raw)
    assert env == Envelope(
        offset=42,
        epoch="k3f9a0b1",
        channel="institution:northwood",
        kind="announcement",
        data=DATA,
        published_at_ms=1_764_246_000_123,
    )
    assert env.position == Position(42, "k3f9a0b1")
    assert env.published_at == datetime(2025, 11, 27, 12, 20, 0, 123000, tzinfo=UTC)
    assert env.published_at.tzinfo is not None
    assert env.published_at.utcoffset() == timedelta(0)


def test_round_trip_from_bytes() -> None:
    raw = assemble(1, "e", 0, encode_body("user:a", "ping", {"é": "ü"}))
    env = decode(raw.encode("utf-8"))
    assert env.data == {"é": "ü"}
    assert env.published_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_body_is_an_object_without_opening_brace() -> None:
    body = encode_body("system:status", "status", {"a": 1})
    assert not body.startswith("{")
    assert body.endswith("}")
    assert json.loads("{" + body) == {
        "channel": "system:status",
        "kind": "status",
        "data": {"a": 1},
    }


def test_body_keeps_unicode_unescaped_and_compact() -> None:
    body = encode_body("c", "k", {"t": "é 🎓"})
    assert "é 🎓" in body
    assert "\\u" not in body
    assert ", " not in body and ": " not in body


def test_assembled_wire_form_is_valid_json() -> None:
    raw = assemble(7, "abcd", 123, encode_body("user:x", "k", {}))
    assert json.loads(raw) == {
        "offset": 7,
        "epoch": "abcd",
        "publishedAt": 123,
        "channel": "user:x",
        "kind": "k",
        "data": {},
    }
    assert list(json.loads(raw))[:3] == ["offset", "epoch", "publishedAt"]


def test_strings_needing_escapes_survive() -> None:
    data = {"q": 'say "hi"\n\\ end', "brace": "}{"}
    env = decode(assemble(1, "e", 5, encode_body('weird"chan', "k\n", data)))
    assert env.data == data
    assert env.channel == 'weird"chan'
    assert env.kind == "k\n"


def test_encode_datetime_as_iso_utc() -> None:
    aware = datetime(2026, 1, 2, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    body = encode_body("c", "k", {"at": aware, "list": [datetime(2026, 1, 2, 8, 30, tzinfo=UTC)]})
    data = json.loads("{" + body)["data"]
    assert data["at"] == "2026-01-02T08:30:00+00:00"
    assert data["list"] == ["2026-01-02T08:30:00+00:00"]
    assert datetime.fromisoformat(data["at"]) == aware


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", Decimal("1.5")])
def test_encode_unsupported_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        encode_body("c", "k", {"v": value})


def test_encode_unsupported_names_the_type() -> None:
    class Custom:
        pass

    with pytest.raises(TypeError, match="cannot encode Custom in an envelope"):
        encode_body("c", "k", {"v": Custom()})


GOOD = {"offset": 1, "epoch": "e", "publishedAt": 5, "channel": "c", "kind": "k", "data": {}}


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "garbage",
        "{",
        "{not json}",
        "null",
        "[]",
        "[1, 2]",
        '"a string"',
        "42",
        "{}",
        b"\xff\xfe\x00",
        json.dumps({**GOOD, "offset": "abc"}),
        json.dumps({**GOOD, "offset": None}),
        json.dumps({**GOOD, "publishedAt": "soon"}),
        json.dumps({**GOOD, "publishedAt": [1]}),
    ]
    + [json.dumps({k: v for k, v in GOOD.items() if k != missing}) for missing in GOOD],
)
def test_decode_rejects_garbage_and_missing_fields(raw: str | bytes) -> None:
    with pytest.raises(EnvelopeError, match="not an envelope"):
        decode(raw)


def test_decode_accepts_the_complete_object() -> None:
    assert decode(json.dumps(GOOD)).offset == 1


def test_decode_error_message_is_truncated() -> None:
    raw = "x" * 1000
    with pytest.raises(EnvelopeError) as info:
        decode(raw)
    assert len(str(info.value)) < 300
    assert isinstance(info.value, ValueError)
