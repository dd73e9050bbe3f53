"""Channel subscriptions and positions."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from resolvers.access import authorize
from resolvers.emit import emit
from schema.announcements import ChannelEvent, ChannelPosition, PositionInput
from schema.context import Context
from schema.errors import ShuttingDown, SlowConsumer
from streams.acl import Action
from streams.envelope import Position
from streams.hub import HubClosed, Reset, SlowSubscriber


async def channel(
    info: strawberry.Info[Context], name: str, since: PositionInput | None = None
) -> AsyncGenerator[ChannelEvent, None]:
    ctx = info.context
    parsed = await authorize(ctx, name, Action.SUBSCRIBE)
    start = Position(int(since.offset), since.epoch) if since else None
    metrics = ctx.services.metrics
    metrics.subscriptions.labels(kind="channel").inc()
    emit(ctx.services, ctx.viewer, "subscription.start", {"channel": parsed.name}, channel=parsed)
    try:
        async with ctx.bus.stream(parsed.name, start, ctx.on_overflow) as items:
            async for item in items:
                if isinstance(item, Reset):
                    yield ChannelEvent.reset(parsed.name, item.position)
                else:
                    yield ChannelEvent.from_envelope(item)
                    metrics.observe_delivery(item)
    except SlowSubscriber as exc:
        raise SlowConsumer(str(exc)) from exc
    except HubClosed as exc:
        raise ShuttingDown(str(exc)) from exc
    finally:
        metrics.subscriptions.labels(kind="channel").dec()
        emit(
            ctx.services, ctx.viewer, "subscription.stop", {"channel": parsed.name}, channel=parsed
        )


async def channel_position(info: strawberry.Info[Context], name: str) -> ChannelPosition:
    parsed = await authorize(info.context, name, Action.SUBSCRIBE)
    return ChannelPosition.from_position(await info.context.bus.position(parsed.name))
