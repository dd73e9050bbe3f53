"""Private notifications: admins and services notify a user or a role; everyone reads
their own inbox."""

from __future__ import annotations

import strawberry

from db import notification_repo
from db.alert_models import Notification as NotificationRow
from db.outbox import Delivery
from resolvers.access import authorize, deliver
from resolvers.announcements import MAX_BODY, MAX_TITLE, _clean
from schema.context import Context
from schema.errors import BadInput
from schema.notifications import Notification, NotifyInput, NotifyResult
from streams.acl import Action
from streams.channels import ChannelKind

MAX_LAST = 200
MAX_IDS = 500


async def notify(info: strawberry.Info[Context], input: NotifyInput) -> NotifyResult:
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
    info: strawberry.Info[Context], unread_only: bool = False, last: int = 50
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


async def mark_read(info: strawberry.Info[Context], ids: list[strawberry.ID]) -> int:
    """How many of your unread notifications are now read; other ids change nothing."""
    ctx = info.context
    ctx.require_viewer()
    if len(ids) > MAX_IDS:
        raise BadInput(f"at most {MAX_IDS} ids at once")
    try:
        numbers = [int(str(i)) for i in ids]
    except ValueError:
        raise BadInput("notification ids are numbers") from None
    if not numbers:
        return 0
    return await notification_repo.mark_read(ctx.sessions, ctx.actor, numbers)
