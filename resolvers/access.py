"""The permission step every resolver shares: parse, decide, audit the denial."""

from __future__ import annotations

from db import repo
from resolvers.emit import emit
from schema.context import Context
from schema.errors import BadChannel, Forbidden
from streams.acl import Action, is_allowed
from streams.channels import Channel, ChannelError, ChannelKind, parse_channel


def channel_or_error(name: str) -> Channel:
    try:
        return parse_channel(name)
    except ChannelError as exc:
        raise BadChannel(str(exc)) from exc


async def authorize(ctx: Context, name: str, action: Action) -> Channel:
    """The parsed channel if the viewer may do ``action`` on it; raise otherwise.

    Denials are audited and counted, so probing other institutions leaves a trail.
    """
    viewer = ctx.require_viewer()
    channel = channel_or_error(name)
    user_home = None
    if channel.kind is ChannelKind.USER and action is Action.PUBLISH and channel.key:
        user_home = await repo.user_institution(ctx.sessions, channel.key)
    if is_allowed(viewer, channel, action, user_institution=user_home):
        return channel
    ctx.services.metrics.permission_denied.labels(action=action.value).inc()
    await repo.audit(ctx.sessions, ctx.actor, f"{action.value}.denied", channel.name, "denied")
    emit(
        ctx.services, viewer, "permission.denied", {"action": action.value, "target": channel.name}
    )
    raise Forbidden(f"{viewer.role.value} {viewer.user_id!r} may not {action.value} on {channel}")
