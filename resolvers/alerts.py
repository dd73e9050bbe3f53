"""Alerts: raise, follow, acknowledge, resolve, and the roll-call.

Who may raise an alert is the channel ACL, applied to what the alert reaches: with
targets, you must be allowed to publish on every target (so teachers reach only their
own classrooms and departments); without targets the alert is institution-wide, which
needs publish rights on the institution's alerts channel (admins and services).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from functools import partial
from typing import Annotated

import strawberry

from db import alert_repo
from db.alert_models import Alert as AlertRow
from db.alert_repo import Outcome, Tally
from db.outbox import Delivery
from resolvers.access import authorize, deliver, refuse
from resolvers.announcements import MAX_BODY, MAX_TITLE, _clean
from resolvers.channels import feed_errors
from schema.alert_feed import ACKNOWLEDGED, acknowledged_message
from schema.alerts import Acknowledgement, Alert, RaiseAlertInput, RollCall
from schema.context import Context
from schema.errors import BadInput, Forbidden, NotFound
from streams.acl import Action, Role, Viewer
from streams.channels import Channel, ChannelKind
from streams.envelope import Envelope

MAX_TARGETS = 20

AlertId = Annotated[
    strawberry.ID, strawberry.argument(description="The alert's id (a number; else BAD_INPUT).")
]
InstitutionId = Annotated[strawberry.ID, strawberry.argument(description="Your institution's id.")]


def _number(value: strawberry.ID) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise BadInput(f"alert id must be a number, got {value!r}") from None


async def _targets(ctx: Context, institution: str, names: list[str]) -> list[Channel]:
    if len(names) > MAX_TARGETS:
        raise BadInput(f"at most {MAX_TARGETS} targets")
    targets = []
    for name in dict.fromkeys(names):
        channel = await authorize(ctx, name, Action.PUBLISH)
        if channel.kind is ChannelKind.SYSTEM_STATUS:
            raise BadInput("system:status reaches no people; it cannot be an alert target")
        if channel.kind is not ChannelKind.USER and channel.institution != institution:
            raise BadInput(f"target {name!r} is not in institution {institution!r}")
        targets.append(channel)
    return targets


def _announcing(kind: str) -> Callable[[AlertRow], list[Delivery]]:
    """The messages of an alert change: on the institution's alerts channel, then on
    each target channel once (committed with the change, ``db/outbox.py``)."""

    def deliveries(row: AlertRow) -> list[Delivery]:
        message = {"alert": Alert.from_row(row).to_message()}
        names = [f"institution:{row.institution_id}:alerts", *row.targets]
        return [Delivery(name, kind, message) for name in dict.fromkeys(names)]

    return deliveries


def manager_channel(institution: str) -> str:
    """The channel of the people who manage every alert of ``institution``: its
    admins (and services, who may read it too)."""
    return f"institution:{institution}:role:admin"


def _acknowledged(tally: Tally) -> list[Delivery]:
    """The ``alert.acknowledged`` messages of one acknowledgement, to the channels
    whose readers are who manages the alert (``_manages``): the admins' role channel
    (admins, services), and the raiser's own channel when the raiser is neither.
    Not the alerts channel: there every acknowledgement would reach every person of
    the institution (N people acknowledging, N² messages)."""
    row = tally.alert
    names = [manager_channel(row.institution_id)]
    if row.raised_by_role not in (Role.ADMIN, Role.SERVICE):
        names.append(f"user:{row.raised_by}")
    message = acknowledged_message(tally)
    return [Delivery(name, ACKNOWLEDGED, message) for name in names]


async def raise_alert(
    info: strawberry.Info[Context],
    input: Annotated[RaiseAlertInput, strawberry.argument(description="The alert to raise.")],
) -> Alert:
    ctx = info.context
    viewer = ctx.require_viewer()
    institution = str(input.institution_id)
    alerts_channel = f"institution:{institution}:alerts"
    if institution != viewer.institution or not input.targets:
        await authorize(ctx, alerts_channel, Action.PUBLISH)  # admins, services; audited
    title = _clean(input.title, "title", MAX_TITLE)
    body = _clean(input.body, "body", MAX_BODY)
    targets = await _targets(ctx, institution, input.targets or [])
    row, _, queued = await alert_repo.create_alert(
        ctx.sessions,
        actor=ctx.actor,
        institution=institution,
        severity=input.severity.value,
        title=title,
        body=body,
        targets=targets,
        deliveries=_announcing("alert"),
    )
    await deliver(ctx, queued)
    return Alert.from_row(row)


def _manages(viewer: Viewer, row: AlertRow) -> bool:
    return viewer.role in (Role.ADMIN, Role.SERVICE) or row.raised_by == viewer.user_id


async def _as_seen(ctx: Context, viewer: Viewer, row: AlertRow) -> Alert:
    """The alert as ``viewer`` may see it: with the roll-call if they manage it."""
    result = Alert.from_row(row)
    if _manages(viewer, row):
        entries = await alert_repo.roll_call(ctx.sessions, row.id)
        online = await ctx.services.presence.online(
            viewer.institution, [e.user_id for e in entries]
        )
        result.roll_call = RollCall.build(entries, online)
    return result


async def alert(
    info: strawberry.Info[Context],
    id: AlertId,
) -> Alert:
    """Visible to the targeted people, admins, services and the raiser; the roll-call
    only to the last three."""
    ctx = info.context
    viewer = ctx.require_viewer()
    number = _number(id)
    row = await alert_repo.get_alert(ctx.sessions, number, viewer.institution)
    if row is None:  # another institution's alerts are missing too (and audited)
        await refuse(ctx, "alert", f"alert:{number}", NotFound(f"no alert {number}"))
    if not _manages(viewer, row) and not await alert_repo.is_recipient(
        ctx.sessions, number, viewer.user_id
    ):
        detail = {"reason": "not targeted"}
        await refuse(ctx, "alert", f"alert:{number}", NotFound(f"no alert {number}"), detail)
    return await _as_seen(ctx, viewer, row)


async def _reload(ctx: Context, viewer: Viewer, number: int) -> Alert | None:
    """The alert after an acknowledgement (which proves the viewer may see it)."""
    row = await alert_repo.get_alert(ctx.sessions, number, viewer.institution)
    return None if row is None else await _as_seen(ctx, viewer, row)


async def alerts(
    info: strawberry.Info[Context], institution_id: InstitutionId
) -> AsyncGenerator[Alert, None]:
    """Alerts raised (and resolved) in your institution, live."""
    ctx = info.context
    channel = await authorize(ctx, f"institution:{institution_id}:alerts", Action.SUBSCRIBE)
    metrics = ctx.services.metrics
    metrics.subscriptions.labels(kind="alerts").inc()
    try:
        with feed_errors():
            async with ctx.bus.stream(channel.name, None, ctx.on_overflow) as items:
                async for item in items:
                    if isinstance(item, Envelope) and isinstance(item.data.get("alert"), dict):
                        yield Alert.from_message(dict(item.data["alert"]))
    finally:
        metrics.subscriptions.labels(kind="alerts").dec()


async def acknowledge_alert(info: strawberry.Info[Context], alert_id: AlertId) -> Acknowledgement:
    ctx = info.context
    viewer = ctx.require_viewer()
    number = _number(alert_id)
    change = await alert_repo.acknowledge(ctx.sessions, ctx.actor, number, _acknowledged)
    match change.outcome:
        case Outcome.NOT_FOUND:
            raise NotFound(f"no alert {number}")
        case Outcome.RESOLVED:
            raise BadInput(f"alert {number} is resolved; it can no longer be acknowledged")
        case Outcome.ALREADY:
            when = f" at {change.at.isoformat()}" if change.at else ""
            raise BadInput(f"you already acknowledged alert {number}{when}")
        case Outcome.NOT_TARGETED:  # audited by alert_repo, in its transaction
            ctx.services.metrics.permission_denied.labels(action="acknowledgeAlert").inc()
            raise Forbidden(f"alert {number} does not target you")
    assert change.at is not None
    await deliver(ctx, change.queued)
    return Acknowledgement(
        alert_id=strawberry.ID(str(number)),
        user_id=strawberry.ID(viewer.user_id),
        acknowledged_at=change.at,
        load_alert=partial(_reload, ctx, viewer, number),
    )


async def resolve_alert(info: strawberry.Info[Context], alert_id: AlertId) -> Alert:
    ctx = info.context
    ctx.require_viewer()
    number = _number(alert_id)
    change = await alert_repo.resolve(
        ctx.sessions, ctx.actor, number, _announcing("alert.resolved")
    )
    match change.outcome:
        case Outcome.NOT_FOUND:
            raise NotFound(f"no alert {number}")
        case Outcome.NOT_ALLOWED:  # audited by alert_repo, in its transaction
            ctx.services.metrics.permission_denied.labels(action="resolveAlert").inc()
            raise Forbidden("only admins and whoever raised the alert may resolve it")
        case Outcome.ALREADY:
            raise BadInput(f"alert {number} is already resolved")
    assert change.alert is not None
    await deliver(ctx, change.queued)
    return Alert.from_row(change.alert)
