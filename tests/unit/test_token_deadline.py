"""One instant for "expired": ``TokenService.deadline`` and the check agree, the
leeway comes from settings, and an in-band refresh may not change whose
connection it is (``resolvers/connection.narrowed``)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydantic import ValidationError

from api.auth import AuthError, TokenExpired, TokenService
from api.settings import Settings
from resolvers.connection import narrowed
from streams.acl import Role, Viewer

SECRET = "d" * 24 + "0123456789abcdefghijklmn"


def service(leeway: float) -> TokenService:
    return TokenService(
        algorithm="HS256", verify_key=SECRET, signing_key=SECRET, leeway_seconds=leeway
    )


def signed(exp: int) -> str:
    claims: dict[str, Any] = {"sub": "alice", "role": "teacher", "inst": "nw", "exp": exp}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("leeway", [0, 2])
@pytest.mark.parametrize("age", [-3, -1, 1, 3])  # whole seconds since exp; negative: ahead
def test_accepted_exactly_while_the_deadline_is_ahead(leeway: int, age: int) -> None:
    """exp = int(now) - age, so exp + leeway > now holds exactly when leeway - age >= 1
    (whatever the fraction of the current second): no case sits on the boundary."""
    tokens = service(leeway)
    exp = int(time.time()) - age
    if leeway - age >= 1:
        assert tokens.deadline(tokens.verify(signed(exp))) == exp + leeway
    else:
        with pytest.raises(TokenExpired) as refused:
            tokens.verify(signed(exp))
        assert refused.value.reason == "token expired"
        assert isinstance(refused.value, AuthError)


def test_the_cache_stops_at_the_same_deadline() -> None:
    tokens = service(0.0)
    exp = int(time.time()) + 1
    token = signed(exp)
    viewer = tokens.verify(token)
    assert tokens.deadline(viewer) == exp
    time.sleep(max(exp - time.time(), 0) + 0.05)
    with pytest.raises(TokenExpired):
        tokens.verify(token)  # the cached viewer is not returned past its deadline


def test_deadline_of_a_viewer_without_expiry_is_none() -> None:
    viewer = Viewer(user_id="svc", role=Role.SERVICE, institution="nw")
    assert service(5.0).deadline(viewer) is None


def test_leeway_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("EDUMATRIX_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir=tmp_path).jwt_leeway_seconds == 5.0
    tokens, _ = TokenService.from_settings(Settings(data_dir=tmp_path, jwt_leeway_seconds=1.5))
    exp = int(time.time()) + 60
    viewer = Viewer(
        user_id="u", role=Role.ADMIN, institution="nw", expires_at=datetime.fromtimestamp(exp, UTC)
    )
    assert tokens.deadline(viewer) == exp + 1.5
    # exp is int(now): passed by a fraction of a second, well inside the 1.5 s leeway.
    just_expired = tokens.mint(sub="u", role=Role.ADMIN, institution="nw", ttl_seconds=0)
    assert tokens.verify(just_expired).user_id == "u"
    for bad in (-1, 301):
        with pytest.raises(ValidationError, match="jwt_leeway_seconds"):
            Settings(data_dir=tmp_path, jwt_leeway_seconds=bad)


HOLDER = Viewer(
    user_id="nw-cy",
    role=Role.STUDENT,
    institution="northwood",
    departments=frozenset({"math"}),
    classrooms=frozenset({"m101", "s201"}),
)


@pytest.mark.parametrize(
    "new",
    [
        HOLDER,
        replace(HOLDER, expires_at=datetime.now(UTC)),
        replace(HOLDER, classrooms=HOLDER.classrooms | {"a1"}),
        replace(HOLDER, departments=HOLDER.departments | {"art"}),
    ],
)
def test_refresh_may_keep_or_widen_the_grant(new: Viewer) -> None:
    assert narrowed(HOLDER, new) is None


@pytest.mark.parametrize(
    ("new", "claim"),
    [
        (replace(HOLDER, user_id="nw-dee"), "'sub'"),
        (replace(HOLDER, institution="riverside"), "'inst'"),
        (replace(HOLDER, role=Role.TEACHER), "'role'"),
        (replace(HOLDER, classrooms=frozenset({"m101"})), "fewer"),
        (replace(HOLDER, departments=frozenset()), "fewer"),
    ],
)
def test_refresh_may_not_change_the_holder_or_narrow_the_grant(new: Viewer, claim: str) -> None:
    reason = narrowed(HOLDER, new)
    assert reason is not None and claim in reason
