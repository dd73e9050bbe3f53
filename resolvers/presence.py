"""Presence: be present while subscribed, read snapshots, set your status."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Annotated

import strawberry

from db import repo
from resolvers.access import authorize, refuse
from resolvers.emit import emit
from schema.context import Context
from schema.errors import BadInput, NotFound
from schema.presence import PresenceEvent, PresenceSnapshot, StatusUpdate
from streams.acl import Action, Viewer, presence_key
from streams.presence import Member, Resync, Status

MAX_MESSAGE = 200

ChannelArg = Annotated[
    str, strawberry.argument(description="The channel, e.g. `institution:northwood`.")
]


async def _member(ctx: Context, viewer: Viewer) -> Member:
    """The viewer as others see them: the directory's name, else their id."""
    user = await repo.get_user(ctx.sessions, viewer.user_id)
    known = user is not None and user.institution_id == viewer.institution
    name = user.display_name if user is not None and known else viewer.user_id
    return Member(user_id=viewer.user_id, display_name=name, role=viewer.role.value)


async def presence_events(
    info: strawberry.Info[Context], channel: ChannelArg
) -> AsyncGenerator[PresenceEvent, None]:
    """Present on ``channel`` until the subscription ends; SNAPSHOT first, then changes."""
    ctx = info.context
    viewer = ctx.require_viewer()
    parsed = await authorize(ctx, channel, Action.SUBSCRIBE)
    key, name = presence_key(parsed, viewer), parsed.name
    presence = ctx.services.presence
    member = await _member(ctx, viewer)
    metrics = ctx.services.metrics
    metrics.subscriptions.labels(kind="presence").inc()
    emit(ctx.services, viewer, "presence.join", {"channel": parsed.name}, channel=parsed)
    try:
        # Events carry the key presence is kept under; clients see the channel.
        async with presence.attend(key, viewer.institution, member) as attendance:
            yield PresenceEvent.from_snapshot(replace(attendance.snapshot, channel=name))
            async for item in attendance.events:
                if isinstance(item, Resync):
                    snapshot = await presence.snapshot(key)
                    attendance.events.after(snapshot.version)
                    yield PresenceEvent.from_snapshot(replace(snapshot, channel=name))
                else:
                    yield PresenceEvent.from_event(replace(item, channel=name))
    finally:
        metrics.subscriptions.labels(kind="presence").dec()
        emit(ctx.services, viewer, "presence.leave", {"channel": parsed.name}, channel=parsed)


async def presence(info: strawberry.Info[Context], channel: ChannelArg) -> PresenceSnapshot:
    ctx = info.context
    parsed = await authorize(ctx, channel, Action.SUBSCRIBE)
    snapshot = await ctx.services.presence.snapshot(presence_key(parsed, ctx.require_viewer()))
    return PresenceSnapshot.from_snapshot(replace(snapshot, channel=parsed.name))


async def online_count(
    info: strawberry.Info[Context],
    institution_id: Annotated[
        strawberry.ID,
        strawberry.argument(description="Your institution's id (another one: NOT_FOUND)."),
    ],
) -> int:
    """Distinct users of your institution holding a presence subscription anywhere."""
    viewer = info.context.require_viewer()
    if str(institution_id) != viewer.institution:  # ids of others do not leak
        error = NotFound(f"no institution {institution_id!r}")
        await refuse(info.context, "onlineCount", f"institution:{institution_id}", error)
    return await info.context.services.presence.online_count(viewer.institution)


async def set_status(
    info: strawberry.Info[Context],
    status: Annotated[Status, strawberry.argument(description="Your new status.")],
    message: Annotated[
        str | None,
        strawberry.argument(
            description="A status message, at most 200 characters; omit or null to clear it."
        ),
    ] = None,
) -> StatusUpdate:
    """Applies on every channel where you are present (STATUS events) and to later joins."""
    ctx = info.context
    viewer = ctx.require_viewer()
    text = (message or "").strip() or None
    if text is not None and len(text) > MAX_MESSAGE:
        raise BadInput(f"message is longer than {MAX_MESSAGE} characters")
    channels = await ctx.services.presence.set_status(viewer.user_id, status, text)
    await repo.audit(
        ctx.sessions, ctx.actor, "setStatus", f"user:{viewer.user_id}", "ok", {"status": status}
    )
    return StatusUpdate(status=status, message=text, channels=channels)
