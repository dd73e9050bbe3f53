"""Unit tests for the channel-name grammar in streams/channels.py."""

from __future__ import annotations

import pytest

from streams.channels import (
    MAX_CHANNEL_LENGTH,
    Channel,
    ChannelError,
    ChannelKind,
    parse_channel,
)

ID64 = "a" * 64
ID65 = "a" * 65


@pytest.mark.parametrize(
    ("name", "kind", "institution", "key"),
    [
        ("institution:northwood", ChannelKind.INSTITUTION, "northwood", None),
        ("institution:n0rth_wood.edu-1", ChannelKind.INSTITUTION, "n0rth_wood.edu-1", None),
        (f"institution:{ID64}", ChannelKind.INSTITUTION, ID64, None),
        ("institution:7", ChannelKind.INSTITUTION, "7", None),
        ("institution:nw:department:math", ChannelKind.DEPARTMENT, "nw", "math"),
        ("institution:nw:classroom:9B.2026", ChannelKind.CLASSROOM, "nw", "9B.2026"),
        ("institution:nw:role:admin", ChannelKind.ROLE, "nw", "admin"),
        ("institution:nw:role:teacher", ChannelKind.ROLE, "nw", "teacher"),
        ("institution:nw:role:student", ChannelKind.ROLE, "nw", "student"),
        ("institution:nw:alerts", ChannelKind.ALERTS, "nw", None),
        ("user:alice", ChannelKind.USER, None, "alice"),
        ("user:U-42_x.y", ChannelKind.USER, None, "U-42_x.y"),
        ("system:status", ChannelKind.SYSTEM_STATUS, None, None),
    ],
)
def test_valid_names_parse_and_round_trip(
    name: str, kind: ChannelKind, institution: str | None, key: str | None
) -> None:
    channel = parse_channel(name)
    assert channel.kind is kind
    assert channel.institution == institution
    assert channel.key == key
    assert channel.name == name
    assert str(channel) == name
    assert parse_channel(channel.name) == channel


def test_name_is_built_from_fields() -> None:
    assert Channel(ChannelKind.CLASSROOM, "nw", "c1").name == "institution:nw:classroom:c1"
    assert Channel(ChannelKind.USER, key="bob").name == "user:bob"
    assert Channel(ChannelKind.SYSTEM_STATUS).name == "system:status"


def test_channel_is_hashable_and_frozen() -> None:
    a = parse_channel("institution:nw:department:math")
    b = parse_channel("institution:nw:department:math")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.key = "art"  # type: ignore[misc]


def test_max_length_boundary() -> None:
    prefix = "institution:a:department:"
    # Identifiers cap at 64 characters, so build a long but legal name from parts.
    name = f"institution:{ID64}:department:{ID64}"
    assert len(name) <= MAX_CHANNEL_LENGTH
    assert parse_channel(name).key == ID64
    too_long = prefix + "b" * (MAX_CHANNEL_LENGTH + 1 - len(prefix))
    assert len(too_long) == MAX_CHANNEL_LENGTH + 1
    with pytest.raises(ChannelError, match="longer than 200"):
        parse_channel(too_long)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "non-empty string"),
        ("x" * 201, "longer than 200 characters"),
        ("institution:" + "a" * 300, "longer than 200 characters"),
        ("school:northwood", "unknown channel 'school:northwood'"),
        ("Institution:northwood", "unknown channel"),
        ("institution", "unknown channel"),
        ("institution:nw:department:math:extra", "unknown channel"),
        ("institution:nw:alerts:extra", "unknown channel"),
        ("institution:nw:role:admin:extra", "unknown channel"),
        ("institution:nw:floor:3", "unknown channel"),
        ("user:alice:inbox", "unknown channel"),
        ("system:status:extra", "unknown channel"),
        ("system:other", "unknown channel 'system:other'"),
        ("system", "unknown channel"),
        ("user:", "invalid user id ''"),
        ("institution:", "invalid institution id ''"),
        ("institution:x:department:", "invalid department id ''"),
        ("institution:x:classroom:", "invalid classroom id ''"),
        ("institution::alerts", "invalid institution id ''"),
        ("institution:north wood", "invalid institution id 'north wood'"),
        ("institution:-north", "invalid institution id '-north'"),
        ("institution:_north", "invalid institution id '_north'"),
        ("institution:.north", "invalid institution id '.north'"),
        (f"institution:{ID65}", f"invalid institution id '{ID65}'"),
        ("institution:nw:department:maths dept", "invalid department id 'maths dept'"),
        ("institution:nw:classroom:-9b", "invalid classroom id '-9b'"),
        (f"institution:nw:classroom:{ID65}", "invalid classroom id"),
        ("user:al ice", "invalid user id 'al ice'"),
        ("user:-alice", "invalid user id '-alice'"),
        (f"user:{ID65}", "invalid user id"),
        ("user:al/ice", "invalid user id"),
        ("user:alïce", "invalid user id"),
        ("institution:bad id:alerts", "invalid institution id 'bad id'"),
        ("institution:bad id:role:admin", "invalid institution id 'bad id'"),
        ("institution:x:role:janitor", "unknown role 'janitor'"),
        ("institution:x:role:service", "unknown role 'service'"),
        ("institution:x:role:Admin", "unknown role 'Admin'"),
        ("institution:x:role:", "unknown role ''"),
    ],
)
def test_invalid_names_are_rejected_with_reason(name: str, message: str) -> None:
    with pytest.raises(ChannelError) as info:
        parse_channel(name)
    assert message in str(info.value)


def test_unknown_role_lists_the_valid_roles() -> None:
    with pytest.raises(ChannelError, match="expected one of admin, student, teacher"):
        parse_channel("institution:x:role:janitor")


def test_unknown_prefix_message_describes_grammar() -> None:
    with pytest.raises(ChannelError) as info:
        parse_channel("school:northwood")
    text = str(info.value)
    assert "user:{id}" in text
    assert "system:status" in text
    assert ":department:{id}" in text


def test_invalid_id_message_names_the_channel() -> None:
    with pytest.raises(ChannelError) as info:
        parse_channel("institution:nw:department:a b")
    assert "'institution:nw:department:a b'" in str(info.value)


@pytest.mark.parametrize("value", [None, 42, b"system:status", ["system", "status"], 3.5])
def test_non_string_input_is_rejected(value: object) -> None:
    with pytest.raises(ChannelError, match="non-empty string"):
        parse_channel(value)  # type: ignore[arg-type]


def test_channel_error_is_a_value_error() -> None:
    assert issubclass(ChannelError, ValueError)


# `$` would also match before a trailing newline; ids are matched whole.
@pytest.mark.parametrize(
    "name",
    ["user:alice\n", "institution:nw\n", f"institution:{ID64}\n", "institution:nw:classroom:c\n"],
)
def test_identifier_with_trailing_newline_is_rejected(name: str) -> None:
    with pytest.raises(ChannelError):
        parse_channel(name)
