"""Directory queries. A viewer only ever sees their own institution."""

from __future__ import annotations

from typing import Annotated

import strawberry

from db import repo
from resolvers.access import refuse
from schema.context import Context
from schema.directory import Institution, Me
from schema.errors import NotFound


async def institutions(info: strawberry.Info[Context]) -> list[Institution]:
    viewer = info.context.require_viewer()
    rows = await repo.list_institutions(info.context.sessions, [viewer.institution])
    return [Institution.from_row(r) for r in rows]


async def institution(
    info: strawberry.Info[Context],
    id: Annotated[
        strawberry.ID, strawberry.argument(description="Your institution's id, e.g. northwood.")
    ],
) -> Institution:
    viewer = info.context.require_viewer()
    # Another institution is reported as missing, not forbidden: ids do not leak.
    rows = await repo.list_institutions(info.context.sessions, [str(id)])
    if not rows or rows[0].id != viewer.institution:
        error = NotFound(f"no institution {id!r}")
        await refuse(info.context, "institution", f"institution:{id}", error)
    return Institution.from_row(rows[0])


async def me(info: strawberry.Info[Context]) -> Me:
    viewer = info.context.require_viewer()
    user = await repo.get_user(info.context.sessions, viewer.user_id)
    if user is not None and user.institution_id != viewer.institution:
        user = None
    return Me.from_viewer(viewer, user)
