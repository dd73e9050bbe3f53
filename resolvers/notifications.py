"""Private notifications: admins and services notify a user or a role; everyone reads
their own inbox."""

from __future__ import annotations

from typing import Annotated

import strawberry

from db import notification_repo
from db.alert_models import Notification as NotificationRow
from db.outbox import Delivery
from resolvers.access import authorize, deliver
from resolvers.announcements import MAX_BODY, MAX_TITLE, _clean
from schema.context import Context
from schema.cursors import PageSize, after_argument, encode_cursor, page_bounds
from schema.errors import BadInput
from schema.notifications import (
    MarkReadPayload,
    Notification,
    NotificationPage,
    NotifyInput,
    NotifyResult,
)
from streams.acl import Action
from streams.channels import ChannelKind

MAX_LAST = 200
MAX_IDS = 500
CURSOR = "notification"

UnreadOnly = Annotated[
    bool, strawberry.argument(description="Only those you have not marked read.")
]
Ids = Annotated[
    list[strawberry.ID],
    strawberry.argument(
        description="Notification ids, at most 500; ids not yours (or of none) change nothing."
    ),
]


async def notify(
    info: strawberry.Info[Context],
    input: Annotated[NotifyInput, strawberry.argument(description="What to send, and to whom.")],
) -> NotifyResult:
    """Persist one receipt per recipient, then deliver live on the addressed channel."""
    ctx = info.context
    viewer = ctx.require_viewer()
    if (input.user_id is None) == (input.channel is None):
        raise BadInput("give exactly one of userId or channel")
    name = f"user:{input.user_id}" if input.user_id is not None else str(input.channel)
    # The ACL: admins and services of the user's (or role channel's) institution.
    channel = await authorize(ctx, name, Action.PUBLISH)
    if channel.kind not in (ChannelKind.USER, ChannelKind.ROLE):
        raise BadInput("channel must be a role channel: institution:{inst}:role:{role}")
    title = _clean(input.title, "title", MAX_TITLE)
    body = _clean(input.body, "body", MAX_BODY)

    def announce(row: NotificationRow) -> list[Delivery]:
        message = {"notification": Notification.from_row(row).to_message()}
        return [Delivery(channel.name, "notification", message)]

    row, recipients, queued = await notification_repo.create_notification(
        ctx.sessions,
        actor=ctx.actor,
        institution=viewer.institution,
        channel=channel,
        title=title,
        body=body,
        deliveries=announce,
    )
    await deliver(ctx, queued)
    return NotifyResult(notification=Notification.from_row(row), recipients=recipients)


async def notifications(
    info: strawberry.Info[Context],
    unread_only: UnreadOnly = False,
    last: Annotated[
        int, strawberry.argument(description="How many, 1 to 200 (else BAD_INPUT).")
    ] = 50,
) -> list[Notification]:
    """Your newest ``last`` notifications, newest first."""
    ctx = info.context
    viewer = ctx.require_viewer()
    if not 1 <= last <= MAX_LAST:
        raise BadInput(f"last must be between 1 and {MAX_LAST}")
    rows = await notification_repo.inbox(
        ctx.sessions, viewer.user_id, unread_only=unread_only, last=last
    )
    return [Notification.from_row(row, read_at) for row, read_at in rows]


async def notification_page(
    info: strawberry.Info[Context],
    unread_only: UnreadOnly = False,
    first: PageSize = 20,
    after: Annotated[str | None, after_argument("notifications")] = None,
) -> NotificationPage:
    """Your notifications, newest first, a page at a time (keyset on the id:
    notifications arriving meanwhile never shift or repeat older pages)."""
    ctx = info.context
    viewer = ctx.require_viewer()
    before = page_bounds(CURSOR, "notificationPage", first, after)
    rows, next_id = await notification_repo.inbox_page(
        ctx.sessions, viewer.user_id, unread_only=unread_only, before=before, first=first
    )
    return NotificationPage(
        rows=[Notification.from_row(row, read_at) for row, read_at in rows],
        next_cursor=encode_cursor(CURSOR, next_id) if next_id is not None else None,
    )


def _numbers(ids: list[strawberry.ID]) -> list[int]:
    if len(ids) > MAX_IDS:
        raise BadInput(f"at most {MAX_IDS} ids at once")
    try:
        return [int(str(i)) for i in ids]
    except ValueError:
        raise BadInput("notification ids are numbers") from None


async def mark_read(info: strawberry.Info[Context], ids: Ids) -> int:
    """How many of your unread notifications are now read; other ids change nothing."""
    ctx = info.context
    ctx.require_viewer()
    numbers = _numbers(ids)
    if not numbers:
        return 0
    return await notification_repo.mark_read(ctx.sessions, ctx.actor, numbers)


async def mark_notifications_read(info: strawberry.Info[Context], ids: Ids) -> MarkReadPayload:
    """markRead, answering with the notifications themselves: a client cache updates
    the objects it holds (``readAt``) and the unread badge from one response."""
    ctx = info.context
    viewer = ctx.require_viewer()
    numbers = _numbers(ids)
    if not numbers:
        return MarkReadPayload(marked=0, notifications=[])
    marked = await notification_repo.mark_read(ctx.sessions, ctx.actor, numbers)
    rows = await notification_repo.received(ctx.sessions, viewer.user_id, numbers)
    return MarkReadPayload(
        marked=marked, notifications=[Notification.from_row(row, at) for row, at in rows]
    )
