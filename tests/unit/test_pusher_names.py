"""Pusher channel names <-> the channel grammar (streams/pusher_names.py): one name
per channel and access, both ways, for every channel kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.channels import CHANNEL_ROLES, ID_PATTERN, Channel, ChannelError, ChannelKind
from streams.pusher_names import MAX_PUSHER_NAME, Access, from_pusher, to_pusher

ids = st.from_regex(ID_PATTERN, fullmatch=True)
# Dots inside identifiers are the interesting case (written "=" in Pusher names).
dotted = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,9}", fullmatch=True), min_size=2).map(
    ".".join
)
any_id = st.one_of(ids, dotted.filter(lambda s: ID_PATTERN.fullmatch(s) is not None))

channels = st.one_of(
    st.builds(Channel, st.just(ChannelKind.INSTITUTION), any_id),
    st.builds(Channel, st.just(ChannelKind.ALERTS), any_id),
    st.builds(Channel, st.just(ChannelKind.DEPARTMENT), any_id, any_id),
    st.builds(Channel, st.just(ChannelKind.CLASSROOM), any_id, any_id),
    st.builds(Channel, st.just(ChannelKind.ROLE), any_id, st.sampled_from(sorted(CHANNEL_ROLES))),
    st.builds(Channel, st.just(ChannelKind.USER), st.none(), any_id),
    st.just(Channel(ChannelKind.SYSTEM_STATUS)),
)


PREFIXED = [Access.PUBLIC, Access.PRIVATE, Access.PRESENCE]


@given(channels, st.sampled_from(PREFIXED), st.booleans())
def test_round_trip_for_every_kind(channel: Channel, access: Access, cache: bool) -> None:
    name = to_pusher(channel, access, cache)
    assert len(name) <= MAX_PUSHER_NAME
    assert ":" not in name
    parsed = from_pusher(name)
    assert parsed.channel == channel
    assert parsed.access is access
    assert parsed.cache is cache
    assert parsed.pusher_name == name
    assert parsed.needs_auth is (access is not Access.PUBLIC)
    assert to_pusher(channel.name, access, cache) == name  # from the canonical string too


@given(any_id)
def test_server_to_user_names_are_user_channels(user: str) -> None:
    name = to_pusher(f"user:{user}", Access.SERVER_TO_USER)
    assert name == f"#server-to-user-{user}"  # pusher-js writes the id as it is
    parsed = from_pusher(name)
    assert parsed.channel == Channel(ChannelKind.USER, key=user)
    assert (parsed.access, parsed.cache) == (Access.SERVER_TO_USER, False)


@pytest.mark.parametrize(
    "channel",
    ["institution:a", "institution:a:alerts", "system:status", "institution:a:role:admin"],
)
def test_only_user_channels_have_a_server_to_user_name(channel: str) -> None:
    with pytest.raises(ChannelError):
        to_pusher(channel, Access.SERVER_TO_USER)


@pytest.mark.parametrize("name", ["#server-to-user-", "#server-to-user-.a", "#server-to-user-a:b"])
def test_bad_server_to_user_names(name: str) -> None:
    with pytest.raises(ChannelError):
        from_pusher(name)


@given(channels, channels)
def test_different_channels_never_share_a_name(a: Channel, b: Channel) -> None:
    if a != b:
        assert to_pusher(a) != to_pusher(b)


@pytest.mark.parametrize(
    ("pusher_name", "access", "cache", "canonical"),
    [
        ("private-institution.northwood", Access.PRIVATE, False, "institution:northwood"),
        (
            "private-institution.northwood.classroom.nw-math-101",
            Access.PRIVATE,
            False,
            "institution:northwood:classroom:nw-math-101",
        ),
        (
            "presence-institution.northwood.department.sci",
            Access.PRESENCE,
            False,
            "institution:northwood:department:sci",
        ),
        ("private-user.j=smith", Access.PRIVATE, False, "user:j.smith"),
        ("private-system.status", Access.PRIVATE, False, "system:status"),
        ("institution.northwood", Access.PUBLIC, False, "institution:northwood"),
        ("private-cache-institution.nw.alerts", Access.PRIVATE, True, "institution:nw:alerts"),
        ("presence-cache-user.a", Access.PRESENCE, True, "user:a"),
        ("cache-institution.nw.role.teacher", Access.PUBLIC, True, "institution:nw:role:teacher"),
        ("private-user.a=", Access.PRIVATE, False, "user:a."),  # ids may end with a dot
        ("private-user.a==b", Access.PRIVATE, False, "user:a..b"),
        (
            "private-institution.n=edu.classroom.9B=2026",
            Access.PRIVATE,
            False,
            "institution:n.edu:classroom:9B.2026",
        ),
    ],
)
def test_documented_names(pusher_name: str, access: Access, cache: bool, canonical: str) -> None:
    parsed = from_pusher(pusher_name)
    assert (parsed.access, parsed.cache, parsed.channel.name) == (access, cache, canonical)
    assert to_pusher(canonical, access, cache) == pusher_name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "private-",
        "presence-",
        "cache-",
        "private-cache-",
        # Dots are separators: an identifier with a dot must be written with "=".
        "private-institution.a.b.classroom.c",
        "private-institution.a.b",
        "private-user.j.smith",
        # Not the one spelling of a channel.
        "private-institution.=a",
        "private-institution..a",
        "private-institution.a.",
        # Prefixes: one access prefix, at most one cache-, in this order.
        "private-private-institution.a",
        "presence-private-institution.a",
        "private-presence-institution.a",
        "cache-private-institution.a",
        "private-cache-cache-institution.a",
        "Private-institution.a",
        "private-encrypted-institution.a",
        # Not the grammar.
        "private-institution.a.role.janitor",
        "private-institution.a.course.b",
        "private-system.other",
        "private-school.a",
        # Characters Pusher does not allow (":" included), and length.
        "private-institution:a",
        "private-institution.a b",
        "private-institution.a/b",
        "private-institution.ä",
        "private-institution." + "a" * 200,
    ],
)
def test_invalid_or_ambiguous_names_are_refused(name: str) -> None:
    with pytest.raises(ChannelError):
        from_pusher(name)


def test_non_string_is_refused() -> None:
    with pytest.raises(ChannelError):
        from_pusher(None)  # type: ignore[arg-type]


def test_to_pusher_refuses_a_bad_canonical_name() -> None:
    with pytest.raises(ChannelError):
        to_pusher("institution:a:b")
