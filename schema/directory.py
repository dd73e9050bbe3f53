"""Institutions, departments, classrooms and the viewer."""

from __future__ import annotations

from typing import Self

import strawberry

from db import models
from streams.acl import Role as AclRole
from streams.acl import Viewer

Role = strawberry.enum(AclRole, description="What a token's holder may do (see the ACL table).")


@strawberry.type
class Department:
    id: strawberry.ID
    name: str
    channel: str = strawberry.field(description="Channel name of this department.")

    @classmethod
    def from_row(cls, row: models.Department) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            channel=f"institution:{row.institution_id}:department:{row.id}",
        )


@strawberry.type
class Classroom:
    id: strawberry.ID
    name: str
    department_id: strawberry.ID | None
    channel: str = strawberry.field(description="Channel name of this classroom.")

    @classmethod
    def from_row(cls, row: models.Classroom) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            department_id=strawberry.ID(row.department_id) if row.department_id else None,
            channel=f"institution:{row.institution_id}:classroom:{row.id}",
        )


@strawberry.type
class Institution:
    id: strawberry.ID
    name: str
    departments: list[Department]
    classrooms: list[Classroom]
    channel: str = strawberry.field(description="Channel name of the whole institution.")

    @classmethod
    def from_row(cls, row: models.Institution) -> Self:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            departments=[Department.from_row(d) for d in row.departments],
            classrooms=[Classroom.from_row(c) for c in row.classrooms],
            channel=f"institution:{row.id}",
        )


@strawberry.type(description="The authenticated caller, as the token describes them.")
class Me:
    id: strawberry.ID
    role: Role  # type: ignore[valid-type]
    institution_id: strawberry.ID
    department_ids: list[strawberry.ID]
    classroom_ids: list[strawberry.ID]
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
