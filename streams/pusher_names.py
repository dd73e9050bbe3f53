"""Pusher channel names onto the channel grammar (``streams.channels``), both ways.

Pusher forbids ``:`` in channel names (allowed: ``A-Z a-z 0-9 _ - = @ , . ;``),
so the grammar's ``:`` becomes ``.``. Identifiers may themselves contain ``.``
(``ID_PATTERN``), which would make ``institution.a.b.classroom.c`` ambiguous, so a
``.`` inside an identifier is written ``=`` (never part of an identifier):

====================================================  ===============================
Pusher                                                channel
====================================================  ===============================
``private-institution.northwood``                     ``institution:northwood``
``private-institution.northwood.classroom.nw-math``   ``institution:northwood:classroom:nw-math``
``presence-institution.northwood.department.sci``     ``institution:northwood:department:sci``
``private-user.j=smith``                              ``user:j.smith``
``private-system.status``                             ``system:status``
``#server-to-user-j.smith``                           ``user:j.smith``
``institution.northwood`` (public)                    ``institution:northwood``
====================================================  ===============================

Prefixes say how the channel is used, never who may read it (``streams.acl``
decides that, for every protocol): ``private-`` needs a signature from the auth
endpoint, ``presence-`` also makes the subscriber a member (``streams.presence``),
``cache-`` after either (or alone) replays the channel's last message on subscribe,
``#server-to-user-{id}`` is the channel pusher-js subscribes to after
``pusher:signin`` (and ``send_to_user`` of the server libraries triggers on): the
signed-in user's own ``user:{id}``. No prefix is a *public* Pusher channel, which
this server serves only to a signed-in connection the ACL lets read it (no channel
of the grammar is readable by anonymous users). ``private-encrypted-`` channels are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from streams.channels import Channel, ChannelError, ChannelKind, parse_channel

MAX_PUSHER_NAME = 200
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-=@,.;")


class Access(StrEnum):
    """What a Pusher name's prefix asks of a subscription."""

    PUBLIC = "public"
    PRIVATE = "private"
    PRESENCE = "presence"
    SERVER_TO_USER = "server-to-user"  # pusher-js subscribes after pusher:signin


SERVER_TO_USER = "#server-to-user-"


@dataclass(frozen=True, slots=True)
class PusherChannel:
    """A Pusher channel name, parsed: its access, whether it caches, and the channel."""

    pusher_name: str
    access: Access
    cache: bool
    channel: Channel

    @property
    def needs_auth(self) -> bool:
        return self.access is not Access.PUBLIC


def _prefix(access: Access, cache: bool) -> str:
    if access is Access.SERVER_TO_USER:
        return SERVER_TO_USER
    head = "" if access is Access.PUBLIC else f"{access.value}-"
    return head + ("cache-" if cache else "")


def to_pusher(channel: Channel | str, access: Access = Access.PRIVATE, cache: bool = False) -> str:
    """The Pusher name of ``channel`` (a parsed channel or its canonical name)."""
    parsed = parse_channel(channel) if isinstance(channel, str) else channel
    if access is Access.SERVER_TO_USER:
        if parsed.kind is not ChannelKind.USER or parsed.key is None:
            raise ChannelError(f"only user channels have a {SERVER_TO_USER} name")
        return SERVER_TO_USER + parsed.key
    parts = parsed.name.split(":")
    return _prefix(access, cache) + ".".join(part.replace(".", "=") for part in parts)


def from_pusher(name: str) -> PusherChannel:
    """Parse a Pusher channel name, or raise :class:`ChannelError` saying why."""
    if not isinstance(name, str) or not name:
        raise ChannelError("channel name must be a non-empty string")
    if len(name) > MAX_PUSHER_NAME:
        raise ChannelError(f"channel name longer than {MAX_PUSHER_NAME} characters")
    if name.startswith(SERVER_TO_USER):
        user = parse_channel(f"user:{name[len(SERVER_TO_USER) :]}")
        return PusherChannel(name, Access.SERVER_TO_USER, False, user)
    if not set(name) <= _ALLOWED:
        raise ChannelError(f"channel name {name!r} has characters Pusher does not allow")
    rest, access = name, Access.PUBLIC
    if rest.startswith("private-encrypted-"):
        raise ChannelError("private-encrypted- channels are not supported")
    for candidate in (Access.PRIVATE, Access.PRESENCE):
        if rest.startswith(f"{candidate.value}-"):
            rest, access = rest[len(candidate.value) + 1 :], candidate
            break
    cache = rest.startswith("cache-")
    if cache:
        rest = rest[len("cache-") :]
    canonical = ":".join(part.replace("=", ".") for part in rest.split("."))
    try:
        channel = parse_channel(canonical)
    except ChannelError as exc:
        raise ChannelError(f"{name!r} maps to no channel: {exc}") from exc
    if to_pusher(channel, access, cache) != name:  # e.g. "a=.b": not the one spelling
        raise ChannelError(f"{name!r} is not the canonical Pusher name of {channel.name!r}")
    return PusherChannel(name, access, cache, channel)
