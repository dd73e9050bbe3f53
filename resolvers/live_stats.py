"""The deployment's delivery numbers and presence over the last hour.

Delivery numbers go to whoever sees liveMetrics and systemStatus (admins and
services; their resolvers check). Presence history goes to whoever may read
presence on the channel (``resolvers/presence.py``'s check), and the online count's
history to whoever may read ``onlineCount``.
"""

from __future__ import annotations

import math
from typing import Annotated

import strawberry
import structlog

from resolvers.access import authorize, refuse
from schema.context import Context
from schema.delivery import DeliveryStats, DeliverySummary
from schema.errors import BadInput, NotFound, Unavailable
from schema.presence_history import PresenceSample, samples_of
from streams.acl import Action, presence_key
from streams.delivery_stats import Readout
from streams.presence_history import SAMPLED_KINDS, PresenceSampler, online_key

log = structlog.get_logger(__name__)

MAX_MINUTES = 60  # what the store keeps
MAX_POINTS = 3600

ChannelArg = Annotated[
    str, strawberry.argument(description="The channel, e.g. `institution:northwood`.")
]
MinutesArg = Annotated[
    int,
    strawberry.argument(
        description="How far back, 1 to 60 minutes (the history keeps an hour; else BAD_INPUT)."
    ),
]


async def _readout(ctx: Context) -> Readout | None:
    stats = ctx.services.delivery
    if stats is None:
        return None
    try:
        return await stats.read()
    except Exception as exc:  # the store (Redis) unreachable: say unknown, not fail
        log.warning("delivery_stats.read_failed", store=stats.kind, error=repr(exc))
        return None


async def delivery_summary(ctx: Context) -> DeliverySummary | None:
    """For liveMetrics (its resolver checked the viewer): null if unknown now."""
    readout = await _readout(ctx)
    return None if readout is None else DeliverySummary.of(readout)


async def delivery_stats(ctx: Context) -> DeliveryStats | None:
    """For systemStatus (its resolver checked the viewer): null if unknown now."""
    readout = await _readout(ctx)
    return None if readout is None else DeliveryStats.of(readout)


def _sampler(ctx: Context) -> PresenceSampler:
    sampler = ctx.services.presence_history
    if sampler is None:
        raise Unavailable("presence history is not kept by this server")
    return sampler


def _slots(sampler: PresenceSampler, minutes: int) -> int:
    if not 1 <= minutes <= MAX_MINUTES:
        raise BadInput(f"minutes must be between 1 and {MAX_MINUTES}")
    slots = math.ceil(minutes * 60 / sampler.interval)
    if slots > MAX_POINTS:
        raise BadInput(f"more than {MAX_POINTS} samples; ask for fewer minutes")
    return slots


async def _series(sampler: PresenceSampler, key: str, slots: int) -> list[PresenceSample]:
    try:
        series = await sampler.read(key, slots)
    except Exception as exc:
        log.warning("presence_history.read_failed", store=sampler.kind, error=repr(exc))
        raise Unavailable("presence history cannot be read now", retry_after=1) from exc
    return samples_of(series)


async def presence_history(
    info: strawberry.Info[Context], channel: ChannelArg, minutes: MinutesArg = 60
) -> list[PresenceSample]:
    """Members present on ``channel`` at each sample, oldest first."""
    ctx = info.context
    viewer = ctx.require_viewer()
    parsed = await authorize(ctx, channel, Action.SUBSCRIBE)  # as Query.presence
    if parsed.kind not in SAMPLED_KINDS:
        kinds = ", ".join(sorted(k.value for k in SAMPLED_KINDS))
        raise BadInput(f"presence history is kept for {kinds} channels only")
    sampler = _sampler(ctx)
    key = presence_key(parsed, viewer)
    return await _series(sampler, key, _slots(sampler, minutes))


async def online_count_history(
    info: strawberry.Info[Context],
    institution_id: Annotated[
        strawberry.ID,
        strawberry.argument(description="Your institution's id (another one: NOT_FOUND)."),
    ],
    minutes: MinutesArg = 60,
) -> list[PresenceSample]:
    """``onlineCount`` at each sample, oldest first."""
    ctx = info.context
    viewer = ctx.require_viewer()
    if str(institution_id) != viewer.institution:  # as onlineCount: ids do not leak
        error = NotFound(f"no institution {institution_id!r}")
        await refuse(ctx, "onlineCountHistory", f"institution:{institution_id}", error)
    sampler = _sampler(ctx)
    return await _series(sampler, online_key(viewer.institution), _slots(sampler, minutes))
