"""Who may subscribe to and publish on which channel: one pure function.

The rules, for a viewer of institution I (a channel of another institution is
never readable nor writable, whatever the role):

=================  ==========================  ===================================
channel            subscribe                   publish
=================  ==========================  ===================================
institution        everyone of I               admin, service
department d       admin, service; members     admin, service; teachers of d
classroom c        admin, service; members     admin, service; teachers of c
role r             admin, service; role == r   admin, service
alerts             everyone of I               admin, service
user u             u only                      admin, service of u's institution
system:status      admin, service (any inst),  platform
                   platform
=================  ==========================  ===================================

``user:{u}`` carries no institution, so publishing there needs the target's home
institution, which the caller looks up and passes as ``user_institution``.

``system:status`` is the one channel every institution's admins share, so writing
to it is reserved to the ``platform`` role, which only a token of the reserved
institution ``platform`` can hold (``api.auth`` refuses any other pairing): an
institution's service token cannot address every school's admins. Presence there
is kept per institution (:func:`presence_key`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from streams.channels import Channel, ChannelKind


class Role(StrEnum):
    ADMIN = "admin"
    TEACHER = "teacher"
    STUDENT = "student"
    SERVICE = "service"
    PLATFORM = "platform"  # operators of the deployment, not of an institution


# The institution claim of platform tokens, and of no institution's token.
PLATFORM_INSTITUTION = "platform"


class Action(StrEnum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


@dataclass(frozen=True, slots=True)
class Viewer:
    """An authenticated identity, taken from verified token claims only."""

    user_id: str
    role: Role
    institution: str
    departments: frozenset[str] = field(default_factory=frozenset)
    classrooms: frozenset[str] = field(default_factory=frozenset)
    expires_at: datetime | None = None


_STAFF = frozenset({Role.ADMIN, Role.SERVICE})


def is_allowed(
    viewer: Viewer,
    channel: Channel,
    action: Action,
    *,
    user_institution: str | None = None,
) -> bool:
    """Decide access; unknown combinations are denied."""
    kind = channel.kind
    if kind is ChannelKind.SYSTEM_STATUS:
        if action is Action.PUBLISH:
            return viewer.role is Role.PLATFORM
        return viewer.role in (Role.ADMIN, Role.SERVICE, Role.PLATFORM)
    if kind is ChannelKind.USER:
        if action is Action.SUBSCRIBE:
            return channel.key == viewer.user_id
        return viewer.role in _STAFF and user_institution == viewer.institution

    if channel.institution != viewer.institution:
        return False
    staff = viewer.role in _STAFF
    match kind:
        case ChannelKind.INSTITUTION | ChannelKind.ALERTS:
            return action is Action.SUBSCRIBE or staff
        case ChannelKind.ROLE:
            return staff or (action is Action.SUBSCRIBE and channel.key == viewer.role.value)
        case ChannelKind.DEPARTMENT | ChannelKind.CLASSROOM:
            if staff:
                return True
            groups = viewer.departments if kind is ChannelKind.DEPARTMENT else viewer.classrooms
            if channel.key not in groups:
                return False
            return action is Action.SUBSCRIBE or viewer.role is Role.TEACHER
    return False


def presence_key(channel: Channel, viewer: Viewer) -> str:
    """Where ``viewer``'s presence on ``channel`` is kept and read.

    Every channel but one belongs to one institution (or one user), so its name
    is its key. ``system:status`` is shared by every institution's admins: there
    each institution gets its own presence, so one school's admins never see
    another's (they once did: northwood's admin listed riverside's).
    """
    if channel.kind is ChannelKind.SYSTEM_STATUS:
        return f"{channel.name}@{viewer.institution}"
    return channel.name
