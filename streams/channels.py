"""Channel names, parsed once into a typed value.

Grammar (anything else is rejected with :class:`ChannelError`)::

    institution:{inst}
    institution:{inst}:department:{dept}
    institution:{inst}:classroom:{class}
    institution:{inst}:role:{admin|teacher|student}
    institution:{inst}:alerts
    user:{user}
    system:status

Identifiers are 1-64 characters of letters, digits, ``_``, ``-`` and ``.``, starting
with a letter or digit. Keeping ``:`` out of identifiers makes every name parse one
way only, so the canonical string is also the Redis key suffix.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

MAX_CHANNEL_LENGTH = 200
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CHANNEL_ROLES = frozenset({"admin", "teacher", "student"})


class ChannelError(ValueError):
    """The name does not follow the channel grammar."""


class ChannelKind(StrEnum):
    INSTITUTION = "institution"
    DEPARTMENT = "department"
    CLASSROOM = "classroom"
    ROLE = "role"
    ALERTS = "alerts"
    USER = "user"
    SYSTEM_STATUS = "system_status"


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel. ``institution`` is None only for user and system channels."""

    kind: ChannelKind
    institution: str | None = None
    key: str | None = None  # department, classroom, role or user id

    @property
    def name(self) -> str:
        match self.kind:
            case ChannelKind.INSTITUTION:
                return f"institution:{self.institution}"
            case ChannelKind.ALERTS:
                return f"institution:{self.institution}:alerts"
            case ChannelKind.DEPARTMENT | ChannelKind.CLASSROOM | ChannelKind.ROLE:
                return f"institution:{self.institution}:{self.kind.value}:{self.key}"
            case ChannelKind.USER:
                return f"user:{self.key}"
            case ChannelKind.SYSTEM_STATUS:
                return "system:status"

    def __str__(self) -> str:
        return self.name


def _ident(value: str, what: str, name: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ChannelError(f"invalid {what} id {value!r} in channel {name!r}")
    return value


def parse_channel(name: str) -> Channel:
    """Parse ``name`` or raise :class:`ChannelError` saying what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise ChannelError("channel name must be a non-empty string")
    return _parse(name)


# Every publish and subscribe parses its channel, and a few channels carry most
# of the traffic: the match, two regular expressions and the enum lookup were ~3%
# of a publish. Channels are immutable values, so equal names share one. Refused
# names raise and are not cached.
@functools.lru_cache(maxsize=4096)
def _parse(name: str) -> Channel:
    if len(name) > MAX_CHANNEL_LENGTH:
        raise ChannelError(f"channel name longer than {MAX_CHANNEL_LENGTH} characters")
    parts = name.split(":")
    match parts:
        case ["system", "status"]:
            return Channel(ChannelKind.SYSTEM_STATUS)
        case ["user", user]:
            return Channel(ChannelKind.USER, key=_ident(user, "user", name))
        case ["institution", inst]:
            return Channel(ChannelKind.INSTITUTION, _ident(inst, "institution", name))
        case ["institution", inst, "alerts"]:
            return Channel(ChannelKind.ALERTS, _ident(inst, "institution", name))
        case ["institution", inst, "role", role]:
            if role not in CHANNEL_ROLES:
                raise ChannelError(
                    f"unknown role {role!r} in channel {name!r}; "
                    f"expected one of {', '.join(sorted(CHANNEL_ROLES))}"
                )
            return Channel(ChannelKind.ROLE, _ident(inst, "institution", name), role)
        case ["institution", inst, ("department" | "classroom") as kind, key]:
            return Channel(
                ChannelKind(kind), _ident(inst, "institution", name), _ident(key, kind, name)
            )
    raise ChannelError(
        f"unknown channel {name!r}; expected institution:{{id}}[:department:{{id}}|"
        ":classroom:{id}|:role:{role}|:alerts], user:{id} or system:status"
    )
