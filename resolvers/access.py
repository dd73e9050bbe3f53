"""Steps every mutation shares: parse and authorize the channel (auditing the
denial), refuse with an audit row, and publish what was stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import structlog

from db import repo
from db.outbox import Queued
from resolvers.emit import emit
from schema.context import Context
from schema.errors import BadChannel, Forbidden, NotFound
from streams.acl import Action, is_allowed
from streams.channels import Channel, ChannelError, ChannelKind, parse_channel

log = structlog.get_logger(__name__)


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
    await repo.audit(ctx.sessions, ctx.actor, action.value, channel.name, "denied")
    emit(
        ctx.services, viewer, "permission.denied", {"action": action.value, "target": channel.name}
    )
    raise Forbidden(f"{viewer.role.value} {viewer.user_id!r} may not {action.value} on {channel}")


async def refuse(
    ctx: Context,
    action: str,
    target: str | None,
    error: Forbidden | NotFound,
    detail: dict[str, Any] | None = None,
) -> NoReturn:
    """Audit a refusal, then raise it: FORBIDDEN as ``denied`` (and counted), NOT_FOUND
    as ``not_found``. Another institution's id is reported missing so that ids do
    not leak, and audited so that probing for them leaves a trail."""
    if isinstance(error, Forbidden):
        ctx.services.metrics.permission_denied.labels(action=action).inc()
        outcome: repo.AuditOutcome = "denied"
    else:
        outcome = "not_found"
    await repo.audit(ctx.sessions, ctx.actor, action, target, outcome, detail)
    raise error


async def deliver(ctx: Context, queued: Sequence[Queued]) -> None:
    """Publish messages committed with their rows (the outbox, ``api/outbox.py``).

    Never fails the mutation: the message is committed, so it is accepted; what
    the bus cannot take now, the relay delivers when it can, with the offset the
    first publish got if it got one.
    """
    await ctx.services.outbox.deliver(queued)
    for item in queued:
        ctx.services.metrics.published_kind(item.kind).inc()
