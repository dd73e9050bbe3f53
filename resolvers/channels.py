"""Channel subscriptions and positions."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Annotated

import strawberry

from resolvers.access import authorize
from resolvers.emit import emit
from schema.announcements import ChannelEvent, ChannelPosition, PositionInput
from schema.context import Context
from schema.errors import BadInput, ShuttingDown, SlowConsumer, Unavailable
from streams.acl import Action
from streams.envelope import Position
from streams.hub import ChannelUnavailable, HubClosed, Reset, SlowSubscriber
from streams.replay import ReplayUnavailable


@contextmanager
def feed_errors() -> Iterator[None]:
    """Every way a channel feed ends, as an error with a code the client sees.

    Why: a subscription never ends silently. graphql-ws and Apollo take a bare
    ``complete`` for a normal end and never resubscribe; with a code (and a retry
    hint) the client knows to resume with ``since``.
    """
    try:
        yield
    except SlowSubscriber as exc:
        raise SlowConsumer(str(exc)) from exc
    except HubClosed as exc:
        raise ShuttingDown(str(exc)) from exc
    except (ReplayUnavailable, ChannelUnavailable) as exc:
        raise Unavailable(str(exc), retry_after=exc.retry_after) from exc


ChannelArg = Annotated[
    str | None,
    strawberry.argument(
        description="The channel, e.g. `institution:northwood`. Give this or `name`, not both."
    ),
]
NameArg = Annotated[
    str | None,
    strawberry.argument(
        description="The channel, under its old argument name.",
        deprecation_reason="Use `channel`, the argument name every other field uses.",
    ),
]
SinceArg = Annotated[
    PositionInput | None,
    strawberry.argument(
        description=(
            "The position of the last event you processed: first replays every message "
            "after it, then continues live. Omit to start live."
        )
    ),
]


def requested(channel: str | None, name: str | None) -> str:
    """The channel a field was asked for: ``channel``, or the deprecated ``name``.

    ``api.plan`` applies the same rule (and leaves a document that breaks it to this
    path, so the error is this one)."""
    if channel is not None and name is None:
        return channel
    if name is not None and channel is None:
        return name
    raise BadInput("give exactly one of `channel` or `name` (deprecated; use `channel`)")


async def channel(
    info: strawberry.Info[Context],
    channel: ChannelArg = None,
    name: NameArg = None,
    since: SinceArg = None,
) -> AsyncGenerator[ChannelEvent, None]:
    ctx = info.context
    ctx.require_viewer()  # UNAUTHENTICATED before BAD_INPUT, as every other field
    parsed = await authorize(ctx, requested(channel, name), Action.SUBSCRIBE)
    start = Position(int(since.offset), since.epoch) if since else None
    metrics = ctx.services.metrics
    metrics.subscriptions.labels(kind="channel").inc()
    emit(ctx.services, ctx.viewer, "subscription.start", {"channel": parsed.name}, channel=parsed)
    try:
        with feed_errors():
            async with ctx.bus.stream(parsed.name, start, ctx.on_overflow) as items:
                async for item in items:
                    if isinstance(item, Reset):
                        yield ChannelEvent.reset(parsed.name, item.position)
                    else:
                        yield ChannelEvent.from_envelope(item)
                        metrics.observe_delivery(item)
    finally:
        metrics.subscriptions.labels(kind="channel").dec()
        emit(
            ctx.services, ctx.viewer, "subscription.stop", {"channel": parsed.name}, channel=parsed
        )


async def channel_position(
    info: strawberry.Info[Context], channel: ChannelArg = None, name: NameArg = None
) -> ChannelPosition:
    info.context.require_viewer()
    parsed = await authorize(info.context, requested(channel, name), Action.SUBSCRIBE)
    return ChannelPosition.from_position(await info.context.bus.position(parsed.name))
