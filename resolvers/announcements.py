"""Publishing and reading announcements."""

from __future__ import annotations

import strawberry

from db import repo
from db.group_commit import NewAnnouncement, StoredAnnouncement
from db.outbox import Delivery
from resolvers.access import authorize, deliver
from schema.announcements import Announcement, PublishAnnouncementInput
from schema.context import Context
from schema.errors import BadInput
from streams.acl import Action

MAX_TITLE = 200
MAX_BODY = 10_000
MAX_LAST = 200


def _clean(value: str, field: str, limit: int) -> str:
    text = value.strip()
    if not text:
        raise BadInput(f"{field} must not be empty")
    if len(text) > limit:
        raise BadInput(f"{field} is longer than {limit} characters")
    return text


async def publish_announcement(
    info: strawberry.Info[Context], input: PublishAnnouncementInput
) -> Announcement:
    """Store, audit and queue its message (group-committed with concurrent
    publishes), then publish; the returned announcement is what subscribers get."""
    ctx = info.context
    channel = await authorize(ctx, input.channel, Action.PUBLISH)
    title = _clean(input.title, "title", MAX_TITLE)
    body = _clean(input.body, "body", MAX_BODY)
    row = await ctx.services.announcements.create(
        NewAnnouncement(
            actor=ctx.actor,
            channel=channel.name,
            institution_id=channel.institution,
            title=title,
            body=body,
            priority=input.priority.value,
            deliveries=_announce,
        )
    )
    await deliver(ctx, row.queued)
    return Announcement.from_row(row)


def _announce(row: StoredAnnouncement) -> list[Delivery]:
    message = {"announcement": Announcement.from_row(row).to_message()}
    return [Delivery(row.channel, "announcement", message)]


async def announcements(
    info: strawberry.Info[Context], channel: str, last: int = 20
) -> list[Announcement]:
    ctx = info.context
    parsed = await authorize(ctx, channel, Action.SUBSCRIBE)
    if not 1 <= last <= MAX_LAST:
        raise BadInput(f"last must be between 1 and {MAX_LAST}")
    rows = await repo.last_announcements(ctx.sessions, parsed.name, last)
    return [Announcement.from_row(r) for r in rows]
