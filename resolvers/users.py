"""People of the directory: who an id in a response is."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.access import refuse
from schema.context import Context
from schema.directory import User, load_user
from schema.errors import NotFound


async def user(
    info: strawberry.Info[Context],
    id: Annotated[
        strawberry.ID,
        strawberry.argument(description="A user id, e.g. an `authorId` or `senderId`."),
    ],
) -> User:
    """A person of your institution; anyone else (or an unknown id) is NOT_FOUND, so
    ids of other institutions do not leak, and is audited like any refused lookup."""
    info.context.require_viewer()
    found = await load_user(info, id)
    if found is None:
        await refuse(info.context, "user", f"user:{id}", NotFound(f"no user {id!r}"))
    return found
