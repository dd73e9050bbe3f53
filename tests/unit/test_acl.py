"""Unit tests for streams/acl.py: the full role x channel x scope x action matrix.

Expected values come from the explicit table below, a transcription of the table in
the module docstring of streams/acl.py, never from ``is_allowed`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streams.acl import PLATFORM_INSTITUTION, Action, Role, Viewer, is_allowed, presence_key
from streams.channels import Channel, parse_channel

OWN = "inst-a"
OTHER = "inst-b"
MY_DEPT = "dept-a"
MY_CLASS = "class-a"


def viewer_for(role: Role, institution: str = OWN) -> Viewer:
    """Every viewer belongs to OWN (platform ones to the platform), is a member of
    MY_DEPT / MY_CLASS."""
    return Viewer(
        user_id=f"me-{role.value}",
        role=role,
        institution=PLATFORM_INSTITUTION if role is Role.PLATFORM else institution,
        departments=frozenset({MY_DEPT, "dept-extra"}),
        classrooms=frozenset({MY_CLASS}),
    )


@dataclass(frozen=True)
class Case:
    """One channel in one relation to the viewer. ``{me}`` is the viewer's user id."""

    name: str
    user_institution: str | None = None

    def channel(self, viewer: Viewer) -> Channel:
        return parse_channel(self.name.format(me=viewer.user_id))


Y, N = True, False
A, T, S, V, P = Role.ADMIN, Role.TEACHER, Role.STUDENT, Role.SERVICE, Role.PLATFORM

# case id -> (channel case, {role: (may subscribe, may publish)})
TABLE: dict[str, tuple[Case, dict[Role, tuple[bool, bool]]]] = {
    # institution: subscribe everyone of I; publish admin, service
    "institution/own": (
        Case(f"institution:{OWN}"),
        {A: (Y, Y), T: (Y, N), S: (Y, N), V: (Y, Y), P: (N, N)},
    ),
    "institution/other": (
        Case(f"institution:{OTHER}"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    # department d: subscribe admin, service, members; publish admin, service, teachers of d
    "department/member": (
        Case(f"institution:{OWN}:department:{MY_DEPT}"),
        {A: (Y, Y), T: (Y, Y), S: (Y, N), V: (Y, Y), P: (N, N)},
    ),
    "department/non-member": (
        Case(f"institution:{OWN}:department:dept-z"),
        {A: (Y, Y), T: (N, N), S: (N, N), V: (Y, Y), P: (N, N)},
    ),
    "department/other-inst-same-id": (
        Case(f"institution:{OTHER}:department:{MY_DEPT}"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    # classroom c: subscribe admin, service, members; publish admin, service, teachers of c
    "classroom/member": (
        Case(f"institution:{OWN}:classroom:{MY_CLASS}"),
        {A: (Y, Y), T: (Y, Y), S: (Y, N), V: (Y, Y), P: (N, N)},
    ),
    "classroom/non-member": (
        Case(f"institution:{OWN}:classroom:class-z"),
        {A: (Y, Y), T: (N, N), S: (N, N), V: (Y, Y), P: (N, N)},
    ),
    "classroom/other-inst-same-id": (
        Case(f"institution:{OTHER}:classroom:{MY_CLASS}"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    # a department id never grants a classroom of the same name, and vice versa
    "classroom/named-like-my-dept": (
        Case(f"institution:{OWN}:classroom:{MY_DEPT}"),
        {A: (Y, Y), T: (N, N), S: (N, N), V: (Y, Y), P: (N, N)},
    ),
    # role r: subscribe admin, service, role == r; publish admin, service
    "role-admin/own": (
        Case(f"institution:{OWN}:role:admin"),
        {A: (Y, Y), T: (N, N), S: (N, N), V: (Y, Y), P: (N, N)},
    ),
    "role-teacher/own": (
        Case(f"institution:{OWN}:role:teacher"),
        {A: (Y, Y), T: (Y, N), S: (N, N), V: (Y, Y), P: (N, N)},
    ),
    "role-student/own": (
        Case(f"institution:{OWN}:role:student"),
        {A: (Y, Y), T: (N, N), S: (Y, N), V: (Y, Y), P: (N, N)},
    ),
    "role-admin/other": (
        Case(f"institution:{OTHER}:role:admin"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    "role-teacher/other": (
        Case(f"institution:{OTHER}:role:teacher"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    "role-student/other": (
        Case(f"institution:{OTHER}:role:student"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    # alerts: subscribe everyone of I; publish admin, service
    "alerts/own": (
        Case(f"institution:{OWN}:alerts"),
        {A: (Y, Y), T: (Y, N), S: (Y, N), V: (Y, Y), P: (N, N)},
    ),
    "alerts/other": (
        Case(f"institution:{OTHER}:alerts"),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    # user u: subscribe u only; publish admin, service of u's institution
    "user/self": (
        Case("user:{me}", user_institution=OWN),
        {A: (Y, Y), T: (Y, N), S: (Y, N), V: (Y, Y), P: (Y, N)},
    ),
    "user/other-same-inst": (
        Case("user:someone-else", user_institution=OWN),
        {A: (N, Y), T: (N, N), S: (N, N), V: (N, Y), P: (N, N)},
    ),
    "user/other-other-inst": (
        Case("user:someone-else", user_institution=OTHER),
        {A: (N, N), T: (N, N), S: (N, N), V: (N, N), P: (N, N)},
    ),
    # system:status: subscribe admin, service (any institution), platform; publish platform
    "system-status": (
        Case("system:status"),
        {A: (Y, N), T: (N, N), S: (N, N), V: (Y, N), P: (Y, Y)},
    ),
}

ALL_ROLES = list(Role)
ALL_ACTIONS = list(Action)


def test_table_covers_every_role() -> None:
    for case_id, (_, by_role) in TABLE.items():
        assert set(by_role) == set(Role), case_id


MATRIX = [
    pytest.param(case_id, role, action, id=f"{case_id}-{role.value}-{action.value}")
    for case_id in TABLE
    for role in ALL_ROLES
    for action in ALL_ACTIONS
]


@pytest.mark.parametrize(("case_id", "role", "action"), MATRIX)
def test_matrix(case_id: str, role: Role, action: Action) -> None:
    case, by_role = TABLE[case_id]
    may_subscribe, may_publish = by_role[role]
    expected = may_subscribe if action is Action.SUBSCRIBE else may_publish
    viewer = viewer_for(role)
    channel = case.channel(viewer)
    actual = is_allowed(viewer, channel, action, user_institution=case.user_institution)
    assert actual is expected, f"{role.value} {action.value} {channel.name}"


@pytest.mark.parametrize("role", [r for r in ALL_ROLES if r is not Role.PLATFORM])
def test_system_status_does_not_depend_on_institution(role: Role) -> None:
    channel = parse_channel("system:status")
    _, by_role = TABLE["system-status"]
    for institution in (OWN, OTHER, "somewhere-else"):
        viewer = viewer_for(role, institution)
        got = (
            is_allowed(viewer, channel, Action.SUBSCRIBE),
            is_allowed(viewer, channel, Action.PUBLISH),
        )
        assert got == by_role[role]


STUDENT_FOREIGN_CHANNELS = [
    f"institution:{OWN}:classroom:class-z",
    f"institution:{OWN}:department:dept-z",
    f"institution:{OTHER}:classroom:{MY_CLASS}",
    f"institution:{OTHER}:department:{MY_DEPT}",
    f"institution:{OTHER}",
    f"institution:{OTHER}:alerts",
    f"institution:{OTHER}:role:student",
    f"institution:{OWN}:role:teacher",
    f"institution:{OWN}:role:admin",
    "user:someone-else",
    "user:me-teacher",
    "user:me-admin",
    "system:status",
]


@pytest.mark.parametrize("name", STUDENT_FOREIGN_CHANNELS)
def test_student_never_subscribes_to_what_is_not_theirs(name: str) -> None:
    student = viewer_for(Role.STUDENT)
    channel = parse_channel(name)
    assert is_allowed(student, channel, Action.SUBSCRIBE) is False
    assert is_allowed(student, channel, Action.SUBSCRIBE, user_institution=OWN) is False


def test_student_with_no_memberships_sees_no_group_channel() -> None:
    student = Viewer(user_id="s1", role=Role.STUDENT, institution=OWN)
    for name in (
        f"institution:{OWN}:classroom:{MY_CLASS}",
        f"institution:{OWN}:department:{MY_DEPT}",
    ):
        assert is_allowed(student, parse_channel(name), Action.SUBSCRIBE) is False


OTHER_INSTITUTION_CHANNELS = [
    f"institution:{OTHER}",
    f"institution:{OTHER}:alerts",
    f"institution:{OTHER}:department:{MY_DEPT}",
    f"institution:{OTHER}:classroom:{MY_CLASS}",
    f"institution:{OTHER}:role:admin",
    f"institution:{OTHER}:role:teacher",
    f"institution:{OTHER}:role:student",
]


@pytest.mark.parametrize("action", ALL_ACTIONS)
@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize("name", OTHER_INSTITUTION_CHANNELS)
def test_no_role_crosses_institutions(name: str, role: Role, action: Action) -> None:
    viewer = viewer_for(role)
    channel = parse_channel(name)
    assert is_allowed(viewer, channel, action) is False
    # Passing a user_institution must not open a non-user channel either.
    assert is_allowed(viewer, channel, action, user_institution=OTHER) is False
    assert is_allowed(viewer, channel, action, user_institution=OWN) is False


@pytest.mark.parametrize("role", ALL_ROLES)
def test_no_role_publishes_to_a_user_of_another_institution(role: Role) -> None:
    viewer = viewer_for(role)
    for name in ("user:someone-else", f"user:{viewer.user_id}"):
        channel = parse_channel(name)
        assert is_allowed(viewer, channel, Action.PUBLISH, user_institution=OTHER) is False


@pytest.mark.parametrize("role", ALL_ROLES)
def test_user_publish_without_user_institution_is_denied(role: Role) -> None:
    viewer = viewer_for(role)
    for name in ("user:someone-else", f"user:{viewer.user_id}"):
        channel = parse_channel(name)
        assert is_allowed(viewer, channel, Action.PUBLISH) is False
        assert is_allowed(viewer, channel, Action.PUBLISH, user_institution=None) is False


@pytest.mark.parametrize("role", ALL_ROLES)
def test_user_subscribe_ignores_user_institution(role: Role) -> None:
    viewer = viewer_for(role)
    own = parse_channel(f"user:{viewer.user_id}")
    other = parse_channel("user:someone-else")
    for user_institution in (None, OWN, OTHER):
        assert is_allowed(viewer, own, Action.SUBSCRIBE, user_institution=user_institution)
        assert not is_allowed(viewer, other, Action.SUBSCRIBE, user_institution=user_institution)


def test_teacher_publishes_only_to_groups_they_belong_to() -> None:
    teacher = Viewer(
        user_id="t1",
        role=Role.TEACHER,
        institution=OWN,
        departments=frozenset({"math"}),
        classrooms=frozenset({"9b"}),
    )
    allowed = ["department:math", "classroom:9b"]
    denied = ["department:art", "classroom:9a", "department:9b", "classroom:math"]
    for suffix in allowed:
        assert is_allowed(teacher, parse_channel(f"institution:{OWN}:{suffix}"), Action.PUBLISH)
    for suffix in denied:
        channel = parse_channel(f"institution:{OWN}:{suffix}")
        assert not is_allowed(teacher, channel, Action.PUBLISH), suffix
        assert not is_allowed(teacher, channel, Action.SUBSCRIBE), suffix


def test_viewer_defaults() -> None:
    viewer = Viewer(user_id="u", role=Role.STUDENT, institution=OWN)
    assert viewer.departments == frozenset()
    assert viewer.classrooms == frozenset()
    assert viewer.expires_at is None


def test_presence_on_system_status_is_kept_per_institution() -> None:
    """The one channel every institution's admins share: their presence is not."""
    status = parse_channel("system:status")
    mine, theirs = viewer_for(Role.ADMIN, OWN), viewer_for(Role.ADMIN, OTHER)
    assert presence_key(status, mine) != presence_key(status, theirs)
    classroom = parse_channel(f"institution:{OWN}:classroom:{MY_CLASS}")
    assert presence_key(classroom, mine) == classroom.name
