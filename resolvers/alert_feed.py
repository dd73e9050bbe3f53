"""Following alerts: a live roll-call, and a page of the institution's alerts.

The roll-call follows the ``alert.acknowledged`` messages that ``acknowledgeAlert``
commits (``resolvers.alerts._acknowledged``) to the channels whose readers are who
manages the alert: ``institution:{i}:role:admin`` (admins, services) and
``user:{raiser}``. No new permission: the channel ACL already says who reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Annotated

import strawberry
from strawberry.types.nodes import SelectedField, Selection

from db import alert_repo
from db.alert_models import Alert as AlertRow
from resolvers.access import refuse
from resolvers.alerts import AlertId, _as_seen, _manages, _number, manager_channel
from resolvers.channels import feed_errors
from schema.alert_feed import ACKNOWLEDGED, AlertPage, AlertStateFilter
from schema.alerts import Alert, AlertState, RollCall
from schema.context import Context
from schema.cursors import PageSize, after_argument, encode_cursor, page_bounds
from schema.errors import Forbidden, NotFound
from streams.acl import Role, Viewer
from streams.hub import ChannelUnavailable, Item, Reset

CURSOR = "alert"
_STAFF = (Role.ADMIN, Role.SERVICE)
# The repository's filter: only resolved (True), only open (False), both (None).
_RESOLVED = {
    AlertStateFilter.OPEN: False,
    AlertStateFilter.RESOLVED: True,
    AlertStateFilter.ALL: None,
}

StateArg = Annotated[
    AlertStateFilter,
    strawberry.argument(description="Which alerts: OPEN (the default), RESOLVED or ALL."),
]


# ---- Query.alertPage -------------------------------------------------------------------


def _selects(selections: Sequence[Selection], path: Sequence[str]) -> bool:
    """Whether the selection reaches the field path (through fragments too)."""
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == path[0] and (
                len(path) == 1 or _selects(selection.selections, path[1:])
            ):
                return True
        elif _selects(selection.selections, path):
            return True
    return False


async def alert_page(
    info: strawberry.Info[Context],
    state: StateArg = AlertStateFilter.OPEN,
    first: PageSize = 20,
    after: Annotated[str | None, after_argument("alerts")] = None,
) -> AlertPage:
    """Your institution's alerts as Query.alert shows them, newest first, a page at
    a time. Roll-calls, when selected, cost one query for the page (and one
    presence lookup), not one per alert."""
    ctx = info.context
    viewer = ctx.require_viewer()
    before = page_bounds(CURSOR, "alertPage", first, after)
    rows, next_id = await alert_repo.alert_page(
        ctx.sessions,
        institution=viewer.institution,
        viewer=viewer.user_id,
        manager=viewer.role in _STAFF,
        resolved=_RESOLVED[state],
        before=before,
        first=first,
    )
    alerts = [Alert.from_row(row) for row in rows]
    managed = [row.id for row in rows if _manages(viewer, row)]
    if managed and _selects(info.selected_fields, ["alertPage", "rows", "rollCall"]):
        calls = await alert_repo.roll_calls(ctx.sessions, managed)
        people = sorted({e.user_id for entries in calls.values() for e in entries})
        online = await ctx.services.presence.online(viewer.institution, people)
        for alert in alerts:
            entries = calls.get(int(alert.id))
            if entries is not None:
                alert.roll_call = RollCall.build(entries, online)
    return AlertPage(
        rows=alerts,
        next_cursor=encode_cursor(CURSOR, next_id) if next_id is not None else None,
    )


# ---- Subscription.alertRollCall ----------------------------------------------------------


async def _managed(ctx: Context, viewer: Viewer, number: int) -> AlertRow:
    """The alert if the viewer manages it; else Query.alert's NOT_FOUND (for those
    it does not target either) or FORBIDDEN (targeted people), audited."""
    target = f"alert:{number}"
    row = await alert_repo.get_alert(ctx.sessions, number, viewer.institution)
    if row is None:
        await refuse(ctx, "alertRollCall", target, NotFound(f"no alert {number}"))
    if _manages(viewer, row):
        return row
    if not await alert_repo.is_recipient(ctx.sessions, number, viewer.user_id):
        detail = {"reason": "not targeted"}
        await refuse(ctx, "alertRollCall", target, NotFound(f"no alert {number}"), detail)
    error = Forbidden(
        f"only admins, services and whoever raised alert {number} may follow its roll-call"
    )
    await refuse(ctx, "alertRollCall", target, error)


def _about(item: Item, alert_id: str) -> bool:
    """Whether a message may change alert ``alert_id``'s roll-call or state. A reset
    (history lost) may hide one, so it counts."""
    if isinstance(item, Reset):
        return True
    if item.kind == ACKNOWLEDGED:
        return item.data.get("alertId") == alert_id
    alert = item.data.get("alert")
    return item.kind == "alert.resolved" and isinstance(alert, dict) and alert.get("id") == alert_id


class _Changes:
    """Watches feeds for news of one alert: :meth:`wait` returns when some arrived
    since the last :meth:`clear`, and raises what ended a feed (slow subscriber,
    shutdown, channel unavailable), so the subscription never ends silently."""

    def __init__(self, feeds: Sequence[AsyncIterator[Item]], alert_id: str) -> None:
        self._event = asyncio.Event()
        self._tasks = [asyncio.create_task(self._watch(feed, alert_id)) for feed in feeds]

    async def _watch(self, feed: AsyncIterator[Item], alert_id: str) -> None:
        async for item in feed:
            if _about(item, alert_id):
                self._event.set()
        raise ChannelUnavailable("the alert's channels ended; subscribe again")

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        waiter = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        for task in self._tasks:
            if task.done():
                task.result()  # raises what ended the feed

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Their ends are known (cancelled, or already raised through wait()).
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def alert_roll_call(
    info: strawberry.Info[Context], id: AlertId
) -> AsyncGenerator[Alert, None]:
    """The alert with its roll-call now, then after each acknowledgement of it; the
    resolved alert last, then complete.

    Driven by the ``alert.acknowledged`` messages on the viewer's channel (the
    admins' role channel, or the raiser's own) and ``alert.resolved`` on the
    institution's alerts channel; each re-reads the roll-call (a burst of
    acknowledgements arriving during one read is folded into the next read), and
    sends it only when it differs from the last one sent.
    """
    ctx = info.context
    viewer = ctx.require_viewer()
    number = _number(id)
    await _managed(ctx, viewer, number)
    staff = viewer.role in _STAFF
    mine = manager_channel(viewer.institution) if staff else f"user:{viewer.user_id}"
    names = [mine, f"institution:{viewer.institution}:alerts"]
    metrics = ctx.services.metrics
    metrics.subscriptions.labels(kind="roll_call").inc()
    try:
        with feed_errors():
            async with AsyncExitStack() as stack:
                # Subscribed before the first read: nothing acknowledged meanwhile is missed.
                feeds = [
                    await stack.enter_async_context(ctx.bus.stream(name, None, ctx.on_overflow))
                    for name in names
                ]
                changes = _Changes(feeds, str(number))
                stack.push_async_callback(changes.close)
                last: Alert | None = None
                while True:
                    changes.clear()
                    row = await alert_repo.get_alert(ctx.sessions, number, viewer.institution)
                    if row is None:  # pragma: no cover - alerts are never deleted
                        raise NotFound(f"no alert {number}")
                    alert = await _as_seen(ctx, viewer, row)
                    if alert != last:  # an event already covered by the last read: nothing new
                        yield alert
                        last = alert
                    if alert.state is AlertState.RESOLVED:
                        return  # the roll-call is final: nobody can acknowledge any more
                    await changes.wait()
    finally:
        metrics.subscriptions.labels(kind="roll_call").dec()
