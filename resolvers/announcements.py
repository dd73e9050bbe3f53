"""Publishing and reading announcements."""

from __future__ import annotations

from typing import Annotated

import strawberry

from db import repo
from db.group_commit import NewAnnouncement, StoredAnnouncement
from db.outbox import Delivery
from resolvers.access import authorize, deliver
from schema.announcements import Announcement, AnnouncementPage, PublishAnnouncementInput
from schema.context import Context
from schema.cursors import PageSize, after_argument, encode_cursor, page_bounds
from schema.errors import BadInput
from streams.acl import Action

MAX_TITLE = 200
MAX_BODY = 10_000
MAX_LAST = 200
CURSOR = "announcement"


def _clean(value: str, field: str, limit: int) -> str:
    text = value.strip()
    if not text:
        raise BadInput(f"{field} must not be empty")
    if len(text) > limit:
        raise BadInput(f"{field} is longer than {limit} characters")
    return text


async def publish_announcement(
    info: strawberry.Info[Context],
    input: Annotated[
        PublishAnnouncementInput, strawberry.argument(description="What to publish, and where.")
    ],
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


Channel = Annotated[
    str, strawberry.argument(description="The channel, e.g. `institution:northwood`.")
]


async def announcements(
    info: strawberry.Info[Context],
    channel: Channel,
    last: Annotated[
        int, strawberry.argument(description="How many, 1 to 200 (else BAD_INPUT).")
    ] = 20,
) -> list[Announcement]:
    ctx = info.context
    parsed = await authorize(ctx, channel, Action.SUBSCRIBE)
    if not 1 <= last <= MAX_LAST:
        raise BadInput(f"last must be between 1 and {MAX_LAST}")
    rows = await repo.last_announcements(ctx.sessions, parsed.name, last)
    return [Announcement.from_row(r) for r in rows]


async def announcement_page(
    info: strawberry.Info[Context],
    channel: Channel,
    first: PageSize = 20,
    after: Annotated[str | None, after_argument("announcements")] = None,
) -> AnnouncementPage:
    """A channel's announcements, newest first, a page at a time (keyset on the id:
    announcements published meanwhile never shift or repeat older pages)."""
    ctx = info.context
    parsed = await authorize(ctx, channel, Action.SUBSCRIBE)
    before = page_bounds(CURSOR, "announcementPage", first, after)
    rows, next_id = await repo.announcement_page(ctx.sessions, parsed.name, before, first)
    return AnnouncementPage(
        rows=[Announcement.from_row(r) for r in rows],
        next_cursor=encode_cursor(CURSOR, next_id) if next_id is not None else None,
    )
