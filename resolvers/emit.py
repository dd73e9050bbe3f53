"""Turn what happens in the server into events; never blocks, never raises.

Every emit point goes through :func:`emit`, which stamps the viewer's
institution, user and (when the event is about one) department or classroom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from streams.acl import Viewer
from streams.channels import Channel, ChannelKind
from streams.events import Event

if TYPE_CHECKING:  # schema imports this module through its extension
    from schema.context import Services

log = structlog.get_logger(__name__)


def emit(
    services: Services,
    viewer: Viewer | None,
    type: str,
    data: dict[str, Any] | None = None,
    *,
    channel: Channel | None = None,
    institution: str | None = None,
    user: str | None = None,
) -> bool:
    """Emit an event about ``viewer`` (or the given institution/user); drop silently
    (counted by the log) when the buffer is full, log when the event is invalid."""
    inst = institution or (viewer.institution if viewer else None)
    if inst is None:
        return False  # no institution to attribute it to; the audit log still has it
    dept = channel.key if channel and channel.kind is ChannelKind.DEPARTMENT else None
    room = channel.key if channel and channel.kind is ChannelKind.CLASSROOM else None
    try:
        event = Event(
            type=type,
            institution_id=inst,
            user_id=user or (viewer.user_id if viewer else None),
            data=data or {},
            department_id=dept,
            classroom_id=room,
        )
    except ValidationError as exc:
        log.warning("events.not_emitted", type=type, error=str(exc.errors()[0]["msg"]))
        return False
    return services.events.emit(event)
