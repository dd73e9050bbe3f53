"""Demo data for the README tour and the tests: two institutions, every role.

Idempotent: rows are merged by primary key, so running it twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.engine import Sessions
from db.models import Classroom, Department, Institution, User


@dataclass(frozen=True)
class DemoUser:
    id: str
    name: str
    role: str
    departments: tuple[str, ...] = ()
    classrooms: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoInstitution:
    id: str
    name: str
    departments: dict[str, str]
    classrooms: dict[str, tuple[str, str]]  # id -> (department id, name)
    users: tuple[DemoUser, ...]


DEMO: tuple[DemoInstitution, ...] = (
    DemoInstitution(
        id="northwood",
        name="Northwood High School",
        departments={"nw-math": "Mathematics", "nw-science": "Science"},
        classrooms={
            "nw-math-101": ("nw-math", "Algebra I"),
            "nw-math-102": ("nw-math", "Geometry"),
            "nw-sci-201": ("nw-science", "Biology"),
        },
        users=(
            DemoUser("nw-admin", "Nora Admin", "admin"),
            DemoUser(
                "nw-ada", "Ada Lovelace", "teacher", ("nw-math",), ("nw-math-101", "nw-math-102")
            ),
            DemoUser("nw-bo", "Bo Bunsen", "teacher", ("nw-science",), ("nw-sci-201",)),
            DemoUser("nw-cy", "Cy Student", "student", ("nw-math",), ("nw-math-101",)),
            DemoUser("nw-dee", "Dee Student", "student", ("nw-science",), ("nw-sci-201",)),
            DemoUser("nw-bell", "Bell Service", "service"),
        ),
    ),
    DemoInstitution(
        id="riverside",
        name="Riverside University",
        departments={"rv-cs": "Computer Science", "rv-history": "History"},
        classrooms={
            "rv-cs-110": ("rv-cs", "Intro to Programming"),
            "rv-hist-210": ("rv-history", "Modern History"),
        },
        users=(
            DemoUser("rv-admin", "Rita Admin", "admin"),
            DemoUser("rv-eve", "Eve Teacher", "teacher", ("rv-cs",), ("rv-cs-110",)),
            DemoUser("rv-finn", "Finn Student", "student", ("rv-cs",), ("rv-cs-110",)),
            DemoUser("rv-gil", "Gil Student", "student", ("rv-history",), ("rv-hist-210",)),
            DemoUser("rv-sync", "Sync Service", "service"),
        ),
    ),
)


def demo_claims(user_id: str) -> dict[str, Any]:
    """The token claims the directory gives a demo user, as ``TokenService.mint``
    keyword arguments: tests and benchmarks mint their tokens from this, so the
    tokens they use are the ones a user of the README tour would get."""
    from streams.acl import Role  # the seed itself needs no ACL

    for inst in DEMO:
        for user in inst.users:
            if user.id == user_id:
                return {
                    "sub": user.id,
                    "role": Role(user.role),
                    "institution": inst.id,
                    "departments": user.departments,
                    "classrooms": user.classrooms,
                }
    raise KeyError(user_id)


async def seed_demo(sessions: Sessions) -> int:
    """Write the demo directory; returns how many users it holds."""
    count = 0
    async with sessions() as session, session.begin():
        for inst in DEMO:
            await session.merge(Institution(id=inst.id, name=inst.name))
            departments = {
                dept_id: await session.merge(
                    Department(id=dept_id, institution_id=inst.id, name=name)
                )
                for dept_id, name in inst.departments.items()
            }
            classrooms = {
                class_id: await session.merge(
                    Classroom(id=class_id, institution_id=inst.id, department_id=dept, name=name)
                )
                for class_id, (dept, name) in inst.classrooms.items()
            }
            await session.flush()
            for demo in inst.users:
                user = await session.merge(
                    User(
                        id=demo.id,
                        institution_id=inst.id,
                        display_name=demo.name,
                        role=demo.role,
                    )
                )
                await session.flush()
                await session.refresh(user, ["departments", "classrooms"])
                user.departments = [departments[d] for d in demo.departments]
                user.classrooms = [classrooms[c] for c in demo.classrooms]
                count += 1
    return count
