"""Institutions, departments, classrooms, people and the viewer."""

from __future__ import annotations

from typing import Self

import strawberry

from db import models
from schema.context import Context
from schema.enums import graphql_enum
from streams.acl import PLATFORM_INSTITUTION, Viewer
from streams.acl import Role as AclRole

Role = graphql_enum(
    "What a person may do; for a token, its `role` claim (see the channel ACL in the README).",
    ADMIN="Administers an institution: publishes anywhere in it, reads its analytics.",
    TEACHER="Publishes on the departments and classrooms they teach.",
    STUDENT="Reads the channels of their departments, classrooms and role.",
    SERVICE="Another system acting for an institution, with an admin's channel rights.",
    PLATFORM="An operator of the deployment; writes system:status, belongs to no school.",
)(AclRole)


@strawberry.type(description="A department of an institution.")
class Department:
    id: strawberry.ID = strawberry.field(description="Stable id, also used in channel names.")
    name: str = strawberry.field(description="Human-readable name, e.g. Mathematics.")
    channel: str = strawberry.field(
        description="This department's channel: `institution:{inst}:department:{id}`."
    )

    @classmethod
    def from_row(cls, row: models.Department) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            channel=f"institution:{row.institution_id}:department:{row.id}",
        )


@strawberry.type(description="A classroom (a class or course) of an institution.")
class Classroom:
    id: strawberry.ID = strawberry.field(description="Stable id, also used in channel names.")
    name: str = strawberry.field(description="Human-readable name, e.g. Algebra I.")
    department_id: strawberry.ID | None = strawberry.field(
        description="The department it belongs to; null if it belongs to none."
    )
    channel: str = strawberry.field(
        description="This classroom's channel: `institution:{inst}:classroom:{id}`."
    )

    @classmethod
    def from_row(cls, row: models.Classroom) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            department_id=strawberry.ID(row.department_id) if row.department_id else None,
            channel=f"institution:{row.institution_id}:classroom:{row.id}",
        )


@strawberry.type(description="A school or university, with its departments and classrooms.")
class Institution:
    id: strawberry.ID = strawberry.field(description="Stable id, also used in channel names.")
    name: str = strawberry.field(description="Human-readable name.")
    departments: list[Department] = strawberry.field(description="All of them, by id.")
    classrooms: list[Classroom] = strawberry.field(description="All of them, by id.")
    channel: str = strawberry.field(description="The institution-wide channel: `institution:{id}`.")

    @classmethod
    def from_row(cls, row: models.Institution) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            departments=[Department.from_row(d) for d in row.departments],
            classrooms=[Classroom.from_row(c) for c in row.classrooms],
            channel=f"institution:{row.id}",
        )


async def _institution(root: User, info: strawberry.Info[Context, None]) -> Institution:
    row = await info.context.loaders.institutions.load(str(root.institution_id))
    if row is None:  # users.institution_id is a foreign key: only if deleted meanwhile
        raise LookupError(f"institution {root.institution_id!r} of user {root.id!r} is gone")
    return Institution.from_row(row)


@strawberry.type(
    description=(
        "A person in your institution's directory. Fields that reference a person by id "
        "(`authorId`, `senderId`, `userId`, ...) have a `User` field next to them "
        "(`author`, `sender`, `user`, ...) that gives this, or null when the directory "
        "does not know the id."
    )
)
class User:
    id: strawberry.ID = strawberry.field(
        description="The user id: the `sub` claim of their token, and `user:{id}` their channel."
    )
    display_name: str = strawberry.field(description="The name to show, e.g. Ada Lovelace.")
    role: Role = strawberry.field(  # type: ignore[valid-type]
        description="Their role in the directory."
    )
    institution_id: strawberry.ID = strawberry.field(description="Always your own institution.")
    institution: Institution = strawberry.field(
        resolver=_institution, description="Their institution (always your own)."
    )

    @classmethod
    def from_row(cls, row: models.User) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            display_name=row.display_name,
            role=AclRole(row.role),
            institution_id=strawberry.ID(row.institution_id),
        )


async def load_user(info: strawberry.Info[Context, None], user_id: object) -> User | None:
    """The directory's user ``user_id`` if they belong to the viewer's institution,
    else None; batched with every other lookup of the same execution step.

    Not viewer-dependent in practice (multiplexed groups share one answer): every
    reader of a channel belongs to the channel's institution, whose people are the
    ones its messages name. The one channel shared across institutions,
    ``system:status``, is written by platform operators, who are in no school's
    directory; platform viewers resolve nobody, so that channel resolves to null
    for every reader alike.
    """
    viewer = info.context.viewer
    if user_id is None or viewer is None or viewer.institution == PLATFORM_INSTITUTION:
        return None
    row = await info.context.loaders.users.load((viewer.institution, str(user_id)))
    return User.from_row(row) if row is not None else None


@strawberry.type(description="The authenticated caller, as the token describes them.")
class Me:
    id: strawberry.ID = strawberry.field(description="Your user id (the token's `sub`).")
    role: Role = strawberry.field(  # type: ignore[valid-type]
        description="Your role (the token's `role`)."
    )
    institution_id: strawberry.ID = strawberry.field(
        description="Your institution (the token's `inst`)."
    )
    department_ids: list[strawberry.ID] = strawberry.field(
        description="Departments you belong to (the token's `depts`), sorted."
    )
    classroom_ids: list[strawberry.ID] = strawberry.field(
        description="Classrooms you belong to (the token's `classes`), sorted."
    )
    display_name: str | None = strawberry.field(
        description="From the directory; null for identities the directory does not know."
    )

    @classmethod
    def from_viewer(cls, viewer: Viewer, user: models.User | None) -> Self:
        return cls(
            id=strawberry.ID(viewer.user_id),
            role=viewer.role,
            institution_id=strawberry.ID(viewer.institution),
            department_ids=[strawberry.ID(d) for d in sorted(viewer.departments)],
            classroom_ids=[strawberry.ID(c) for c in sorted(viewer.classrooms)],
            display_name=user.display_name if user else None,
        )
