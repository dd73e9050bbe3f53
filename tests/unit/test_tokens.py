"""Unit tests for api/auth.py (TokenService, viewer_from_claims) and api/settings.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.auth import AuthError, TokenService, viewer_from_claims
from api.secret_policy import (
    is_loopback,
    secret_weakness,
    shannon_bits_per_byte,
    smallest_period,
)
from api.settings import Mode, Settings
from db.engine import ensure_sqlite_dir
from streams.acl import PLATFORM_INSTITUTION, Role, Viewer
from tests.server import SECRET as SERVER_SECRET

SECRET = "s" * 24 + "0123456789abcdefghijklmn"  # 48 characters
OTHER_SECRET = "o" * 24 + "0123456789abcdefghijklmn"
assert len(SECRET) == len(OTHER_SECRET) == 48


_DROP = object()  # claims(name=_DROP) leaves the claim out


@pytest.fixture
def service() -> TokenService:
    return TokenService(algorithm="HS256", verify_key=SECRET, signing_key=SECRET)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "role": "teacher",
        "inst": "northwood",
        "depts": ["math"],
        "classes": ["9b"],
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


def hs256(payload: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- TokenService: round trip --------------------------------------------------------


def test_mint_verify_round_trip(service: TokenService) -> None:
    before = int(time.time())
    token = service.mint(
        sub="alice",
        role=Role.TEACHER,
        institution="northwood",
        departments=["math", "physics", "math"],
        classrooms=("9b",),
        ttl_seconds=120,
    )
    viewer = service.verify(token)
    assert isinstance(viewer, Viewer)
    assert viewer.user_id == "alice"
    assert viewer.role is Role.TEACHER
    assert viewer.institution == "northwood"
    assert viewer.departments == frozenset({"math", "physics"})
    assert isinstance(viewer.departments, frozenset)
    assert viewer.classrooms == frozenset({"9b"})
    assert isinstance(viewer.classrooms, frozenset)
    assert viewer.expires_at is not None
    assert viewer.expires_at.tzinfo is not None
    expires = viewer.expires_at.timestamp()
    assert before + 120 <= expires <= int(time.time()) + 120


def test_minted_claims_are_sorted_and_typed(service: TokenService) -> None:
    token = service.mint(
        sub="bob", role=Role.STUDENT, institution="nw", departments=["b", "a", "b"]
    )
    payload = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert payload["role"] == "student"
    assert payload["inst"] == "nw"
    assert payload["depts"] == ["a", "b"]
    assert payload["classes"] == []
    assert payload["exp"] - payload["iat"] == 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize("role", list(Role))
def test_every_role_round_trips(service: TokenService, role: Role) -> None:
    institution = PLATFORM_INSTITUTION if role is Role.PLATFORM else "nw"
    viewer = service.verify(service.mint(sub="u1", role=role, institution=institution))
    assert viewer.role is role
    assert viewer.departments == frozenset()
    assert viewer.classrooms == frozenset()


def test_mint_refuses_invalid_claims(service: TokenService) -> None:
    with pytest.raises(AuthError, match="'sub'"):
        service.mint(sub="not an id", role=Role.ADMIN, institution="nw")
    with pytest.raises(AuthError, match="'inst'"):
        service.mint(sub="u", role=Role.ADMIN, institution="")
    with pytest.raises(AuthError, match="'depts'"):
        service.mint(sub="u", role=Role.ADMIN, institution="nw", departments=["a b"])
    with pytest.raises(AuthError, match="'classes'"):
        service.mint(sub="u", role=Role.ADMIN, institution="nw", classrooms=["-x"])


def test_mint_without_signing_key_fails() -> None:
    verify_only = TokenService(algorithm="HS256", verify_key=SECRET, signing_key=None)
    with pytest.raises(AuthError, match="no signing key"):
        verify_only.mint(sub="u", role=Role.ADMIN, institution="nw")


def test_issuer_and_audience_are_enforced() -> None:
    strict = TokenService(
        algorithm="HS256", verify_key=SECRET, signing_key=SECRET, issuer="emx", audience="api"
    )
    token = strict.mint(sub="u", role=Role.ADMIN, institution="nw")
    assert strict.verify(token).user_id == "u"
    with pytest.raises(AuthError, match="'iss'"):
        strict.verify(hs256(claims()))  # no iss / aud
    with pytest.raises(AuthError, match="'aud'"):
        strict.verify(hs256(claims(iss="emx")))
    with pytest.raises(AuthError, match="invalid token"):
        strict.verify(hs256(claims(iss="other", aud="api")))
    with pytest.raises(AuthError, match="invalid token"):
        strict.verify(hs256(claims(iss="emx", aud="other")))


# --- TokenService: rejections --------------------------------------------------------


def test_expired_token(service: TokenService) -> None:
    token = service.mint(sub="alice", role=Role.ADMIN, institution="nw", ttl_seconds=-60)
    with pytest.raises(AuthError) as info:
        service.verify(token)
    assert info.value.reason == "token expired"
    assert str(info.value) == "token expired"


def test_expiry_within_leeway_is_accepted(service: TokenService) -> None:
    token = hs256(claims(exp=int(time.time()) - 2))  # leeway is 5 seconds
    assert service.verify(token).user_id == "alice"


def test_wrong_signature(service: TokenService) -> None:
    token = hs256(claims(), OTHER_SECRET)
    with pytest.raises(AuthError, match="invalid token") as info:
        service.verify(token)
    assert "expired" not in info.value.reason


def test_tampered_payload_is_rejected(service: TokenService) -> None:
    header, _, signature = service.mint(sub="alice", role=Role.STUDENT, institution="nw").split(".")
    forged = _b64(json.dumps(claims(role="admin")).encode())
    with pytest.raises(AuthError, match="invalid token"):
        service.verify(f"{header}.{forged}.{signature}")


def test_alg_none_is_rejected(service: TokenService) -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    assert token.endswith(".")
    with pytest.raises(AuthError, match="invalid token"):
        service.verify(token)


def test_handcrafted_alg_none_is_rejected(service: TokenService) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(role="admin")).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        with pytest.raises(AuthError):
            service.verify(token)


def test_other_hmac_algorithm_is_rejected(service: TokenService) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS384")
    # The signature is valid for HS384 with the same key; only the algorithm is wrong.
    assert jwt.decode(token, SECRET, algorithms=["HS384"])["sub"] == "alice"
    with pytest.raises(AuthError, match="invalid token"):
        service.verify(token)


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "not-a-jwt", "....."])
def test_garbage_token_is_rejected(service: TokenService, garbage: str) -> None:
    with pytest.raises(AuthError, match="invalid token"):
        service.verify(garbage)


@pytest.mark.parametrize("claim", ["sub", "role", "inst", "exp"])
def test_missing_required_claim(service: TokenService, claim: str) -> None:
    token = hs256(claims(**{claim: _DROP}))
    with pytest.raises(AuthError) as info:
        service.verify(token)
    assert f"'{claim}'" in info.value.reason
    assert "lacks" in info.value.reason


@pytest.mark.parametrize("role", ["janitor", "ADMIN", "", 3])
def test_bad_role_value(service: TokenService, role: object) -> None:
    with pytest.raises(AuthError, match="claim 'role' must be one of admin, teacher"):
        service.verify(hs256(claims(role=role)))


@pytest.mark.parametrize("name", ["depts", "classes"])
@pytest.mark.parametrize(
    "value",
    ["math", {"math": 1}, 7, None, ["ok", "not ok"], ["-x"], [""], [1], ["a" * 65], [["a"]]],
)
def test_bad_id_lists(service: TokenService, name: str, value: object) -> None:
    with pytest.raises(AuthError, match=f"claim '{name}' must be a list of ids"):
        service.verify(hs256(claims(**{name: value})))


@pytest.mark.parametrize(
    ("claim", "value", "message"),
    [
        ("sub", "a b", "claim 'sub' must be a user id"),
        ("sub", "-a", "claim 'sub' must be a user id"),
        ("inst", "north wood", "claim 'inst' must be an institution id"),
        ("inst", 12, "claim 'inst' must be an institution id"),
        ("inst", "x" * 65, "claim 'inst' must be an institution id"),
    ],
)
def test_bad_identity_claims(
    service: TokenService, claim: str, value: object, message: str
) -> None:
    with pytest.raises(AuthError, match=message):
        service.verify(hs256(claims(**{claim: value})))


def test_depts_and_classes_are_optional(service: TokenService) -> None:
    viewer = service.verify(hs256(claims(depts=_DROP, classes=_DROP)))
    assert viewer.departments == frozenset()
    assert viewer.classrooms == frozenset()


# --- viewer_from_claims directly -----------------------------------------------------


def test_viewer_from_claims_builds_viewer() -> None:
    viewer = viewer_from_claims(
        {"sub": "u", "role": "service", "inst": "nw", "depts": ["a"], "exp": 1_700_000_000}
    )
    assert viewer == Viewer(
        user_id="u",
        role=Role.SERVICE,
        institution="nw",
        departments=frozenset({"a"}),
        classrooms=frozenset(),
        expires_at=datetime.fromtimestamp(1_700_000_000, UTC),
    )


def test_viewer_from_claims_without_exp_has_no_expiry() -> None:
    assert viewer_from_claims({"sub": "u", "role": "admin", "inst": "nw"}).expires_at is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"role": "admin", "inst": "nw"}, "'sub'"),
        ({"sub": "u", "role": "admin"}, "'inst'"),
        ({"sub": "u", "inst": "nw"}, "'role'"),
        ({"sub": "u", "inst": "nw", "role": None}, "'role'"),
        ({"sub": "u", "inst": "nw", "role": "admin", "classes": "9b"}, "'classes'"),
    ],
)
def test_viewer_from_claims_rejects(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthError, match=message):
        viewer_from_claims(payload)


# --- verify_header -------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_verify_header_missing(service: TokenService, value: str | None) -> None:
    with pytest.raises(AuthError, match="missing Authorization"):
        service.verify_header(value)


@pytest.mark.parametrize(
    "value",
    ["Basic x", "Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer ", "Bearer    ", "   "],
)
def test_verify_header_malformed(service: TokenService, value: str) -> None:
    with pytest.raises(AuthError, match="must be 'Bearer <token>'"):
        service.verify_header(value)


def test_verify_header_accepts_bearer(service: TokenService) -> None:
    token = service.mint(sub="alice", role=Role.ADMIN, institution="nw")
    for value in (f"Bearer {token}", f"bearer {token}", f"  BEARER {token}  "):
        assert service.verify_header(value).user_id == "alice"


def test_verify_header_bad_token(service: TokenService) -> None:
    with pytest.raises(AuthError, match="invalid token"):
        service.verify_header("Bearer nope")
    with pytest.raises(AuthError, match="invalid token"):
        service.verify_header(f"Bearer {hs256(claims(), OTHER_SECRET)}")


# --- RS256 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_pems() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return public_pem, private_pem


@pytest.fixture
def rs_service(rsa_pems: tuple[str, str]) -> TokenService:
    public_pem, private_pem = rsa_pems
    return TokenService(algorithm="RS256", verify_key=public_pem, signing_key=private_pem)


def test_rs256_round_trip(rs_service: TokenService) -> None:
    token = rs_service.mint(sub="svc", role=Role.SERVICE, institution="nw", classrooms=["c1", "c2"])
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    viewer = rs_service.verify(token)
    assert viewer.user_id == "svc"
    assert viewer.role is Role.SERVICE
    assert viewer.classrooms == frozenset({"c1", "c2"})


def test_rs256_verify_only_service(rsa_pems: tuple[str, str], rs_service: TokenService) -> None:
    public_pem, _ = rsa_pems
    verifier = TokenService(algorithm="RS256", verify_key=public_pem, signing_key=None)
    token = rs_service.mint(sub="u", role=Role.ADMIN, institution="nw")
    assert verifier.verify(token).user_id == "u"
    with pytest.raises(AuthError, match="no signing key"):
        verifier.mint(sub="u", role=Role.ADMIN, institution="nw")


def test_rs256_rejects_token_from_other_key(rs_service: TokenService) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    with pytest.raises(AuthError, match="invalid token"):
        rs_service.verify(token)


def test_rs256_rejects_hs256_signed_with_public_key(
    rsa_pems: tuple[str, str], rs_service: TokenService
) -> None:
    """Algorithm confusion: HS256 keyed with the public PEM text must not verify."""
    public_pem, _ = rsa_pems
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(role="admin")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest())
    token = f"{header}.{payload}.{signature}"
    with pytest.raises(AuthError, match="invalid token"):
        rs_service.verify(token)


def test_hs256_service_rejects_rs256_token(service: TokenService, rs_service: TokenService) -> None:
    token = rs_service.mint(sub="u", role=Role.ADMIN, institution="nw")
    with pytest.raises(AuthError, match="invalid token"):
        service.verify(token)


# --- Settings ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in (
        "EDUMATRIX_JWT_SECRET",
        "EDUMATRIX_REDIS_URL",
        "EDUMATRIX_DATABASE_URL",
        "EDUMATRIX_KAFKA_BOOTSTRAP",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.upper().startswith("EDUMATRIX_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # Settings also reads ./.env
    return tmp_path


def test_cluster_requires_jwt_secret(clean_env: Path) -> None:
    with pytest.raises(ValidationError, match="EDUMATRIX_JWT_SECRET is required"):
        Settings(redis_url="redis://x")


WEAK_SECRETS = {
    "placeholder": "changeme",
    "placeholder-upper": "CHANGEME",
    "secret": "secret",
    "test": "test",
    "short": "x" * 31,
    "one-char": "x" * 48,
    "spaces": " " * 32,
    "whitespace": " \t\n " * 10,
    "changeme-x4": "changeme" * 4,
    "placeholder-padded-x4": "Change-Me!" * 4,
    "pattern": "abcd1234" * 5,
    "pattern-partial": "0123456789abcdef" * 2 + "01234567",
    "padded-phrase": "edumatrix-test-secret-" + "k" * 40,
    "low-entropy": "a" * 30 + "bcdefgh" + "a" * 10,
}


@pytest.mark.parametrize("secret", list(WEAK_SECRETS.values()), ids=list(WEAK_SECRETS))
def test_cluster_rejects_weak_secret(clean_env: Path, secret: str) -> None:
    with pytest.raises(ValidationError, match="too weak .* at least 32 bytes"):
        Settings(redis_url="redis://x", jwt_secret=secret)


def test_cluster_with_strong_secret(clean_env: Path) -> None:
    settings = Settings(redis_url="redis://x", jwt_secret=SECRET)
    assert settings.mode is Mode.CLUSTER
    assert settings.signing_secret() == (SECRET, False)
    service, generated = TokenService.from_settings(settings)
    assert generated is False
    token = service.mint(sub="u", role=Role.ADMIN, institution="nw")
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "u"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kafka_bootstrap": "localhost:9092"},
        {"database_url": "postgresql://u:p@db/emx"},
    ],
)
def test_other_cluster_triggers_require_secret(clean_env: Path, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="EDUMATRIX_JWT_SECRET is required"):
        Settings(**kwargs)


def test_cluster_secret_from_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDUMATRIX_REDIS_URL", "redis://x")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("EDUMATRIX_JWT_SECRET", SECRET)
    assert Settings().mode is Mode.CLUSTER


def test_embedded_generates_and_persists_secret(clean_env: Path) -> None:
    data_dir = clean_env / "data"
    settings = Settings(data_dir=data_dir)
    assert settings.mode is Mode.EMBEDDED
    assert not settings.dev_secret_path.exists()
    secret, generated = settings.signing_secret()
    assert generated is True
    assert len(secret.encode()) >= 32
    path = settings.dev_secret_path
    assert path.parent == data_dir
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.signing_secret() == (secret, True)
    # A fresh Settings over the same directory agrees (serve and token in two shells).
    assert Settings(data_dir=data_dir).signing_secret() == (secret, True)


def test_embedded_from_settings_round_trips(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env)
    service, generated = TokenService.from_settings(settings)
    assert generated is True
    again, _ = TokenService.from_settings(Settings(data_dir=clean_env))
    token = service.mint(sub="u", role=Role.TEACHER, institution="nw")
    assert again.verify(token).role is Role.TEACHER


def test_embedded_with_configured_secret_does_not_write_file(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env, jwt_secret="short-is-fine-in-embedded")
    assert settings.mode is Mode.EMBEDDED
    assert settings.signing_secret() == ("short-is-fine-in-embedded", False)
    assert not settings.dev_secret_path.exists()


def test_cached_verification_still_expires() -> None:
    """Verified tokens are cached, but a cached token stops working at its exp."""
    service = TokenService(
        algorithm="HS256", verify_key="s" * 48, signing_key="s" * 48, leeway_seconds=0
    )
    token = service.mint(sub="u1", role=Role.STUDENT, institution="i1", ttl_seconds=1)
    assert service.verify(token) is service.verify(token)  # second call is the cached one
    time.sleep(1.2)
    with pytest.raises(AuthError, match="expired"):
        service.verify(token)


# --- time claims: integers only, bounded (issue 16) ----------------------------------

DAY = 24 * 3600


def _now() -> int:
    return int(time.time())


def bad_time_claims() -> dict[str, tuple[dict[str, Any], str]]:
    """Built when a test runs: times taken at collection go stale in a long run."""
    return {
        "exp-numeric-string": ({"exp": str(_now() + 600)}, "'exp' must be an integer"),
        "exp-float": ({"exp": _now() + 600.5}, "'exp' must be an integer"),
        "exp-integral-float": ({"exp": float(_now() + 600)}, "'exp' must be an integer"),
        "exp-bool": ({"exp": True}, "expired|'exp' must be an integer"),
        "exp-list": ({"exp": [_now() + 600]}, "invalid token|'exp' must be an integer"),
        "exp-1e20": ({"exp": 10**20}, "'exp' lies more than"),
        "exp-2^64": ({"exp": 2**64}, "'exp' lies more than"),
        "exp-beyond-max-ttl": ({"exp": _now() + 31 * DAY}, "'exp' lies more than 2592000 seconds"),
        "exp-past": ({"exp": _now() - 60}, "token expired"),
        "exp-far-past": ({"exp": -(10**20)}, "token expired"),
        "iat-future": ({"iat": _now() + 120}, r"not yet valid \(iat\)"),
        "iat-string": ({"iat": str(_now())}, "'iat' must be an integer"),
        "iat-float": ({"iat": _now() + 0.5}, "'iat' must be an integer"),
        "nbf-future": ({"nbf": _now() + 120}, r"not yet valid \(nbf\)"),
        "nbf-string": ({"nbf": str(_now() - 10)}, "'nbf' must be an integer"),
        "nbf-null": ({"nbf": None}, r"(nbf\)|'nbf') must be an integer"),
    }


@pytest.mark.parametrize("case", list(bad_time_claims()))
def test_bad_time_claims_are_refused(service: TokenService, case: str) -> None:
    overrides, message = bad_time_claims()[case]
    token = hs256(claims(**overrides))
    with pytest.raises(AuthError, match=message):
        service.verify(token)
    with pytest.raises(AuthError, match=message):  # and nothing was cached
        service.verify(token)


def test_good_time_claims_are_accepted(service: TokenService) -> None:
    now = _now()
    for overrides in (
        {"exp": now + 30 * DAY - 60},  # just inside the default maximum
        {"nbf": now - 10, "iat": now - 10},
        {"nbf": now + 2, "iat": now + 2},  # within the 5 s leeway
        {"iat": _DROP},
    ):
        assert service.verify(hs256(claims(**overrides))).user_id == "alice"


def test_max_ttl_is_configurable() -> None:
    strict = TokenService(
        algorithm="HS256", verify_key=SECRET, signing_key=SECRET, max_ttl_seconds=600
    )
    assert strict.verify(hs256(claims(exp=_now() + 590))).user_id == "alice"
    with pytest.raises(AuthError, match="'exp' lies more than 600 seconds"):
        strict.verify(hs256(claims(exp=_now() + 700)))
    with pytest.raises(AuthError, match="longer than the 600 s"):
        strict.mint(sub="u", role=Role.ADMIN, institution="nw", ttl_seconds=601)
    assert strict.verify(strict.mint(sub="u", role=Role.ADMIN, institution="nw", ttl_seconds=600))


def test_max_ttl_from_settings(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env, jwt_max_ttl_seconds=3600)
    service, _ = TokenService.from_settings(settings)
    with pytest.raises(AuthError, match="longer than the 3600 s"):
        service.mint(sub="u", role=Role.ADMIN, institution="nw", ttl_seconds=7200)
    assert Settings(data_dir=clean_env).jwt_max_ttl_seconds == 30 * DAY
    for bad in (0, 59, 367 * DAY):
        with pytest.raises(ValidationError, match="jwt_max_ttl_seconds"):
            Settings(data_dir=clean_env, jwt_max_ttl_seconds=bad)


def test_numeric_string_exp_is_not_cached_past_expiry() -> None:
    """The reported bug: ``"exp": "<soon>"`` passed PyJWT (it calls int()), the
    viewer got no expiry, and the cache kept accepting the token forever."""
    service = TokenService(
        algorithm="HS256", verify_key=SECRET, signing_key=SECRET, leeway_seconds=0
    )
    token = hs256(claims(exp=str(_now() + 1)))
    for _ in range(2):
        with pytest.raises(AuthError, match="'exp' must be an integer"):
            service.verify(token)


def test_cached_viewer_expires_at_the_integer_exp() -> None:
    service = TokenService(
        algorithm="HS256", verify_key=SECRET, signing_key=SECRET, leeway_seconds=0
    )
    exp = _now() + 1
    viewer = service.verify(hs256(claims(exp=exp)))
    assert viewer.expires_at == datetime.fromtimestamp(exp, UTC)


@pytest.mark.parametrize("exp", [10**20, -(10**20), 2**63])
def test_viewer_from_claims_out_of_range_exp(exp: int) -> None:
    with pytest.raises(AuthError, match="'exp' is out of range"):
        viewer_from_claims({"sub": "u", "role": "admin", "inst": "nw", "exp": exp})


@pytest.mark.parametrize("exp", ["1700000000", 1_700_000_000.0, True, None])
def test_viewer_from_claims_non_integer_exp(exp: object) -> None:
    with pytest.raises(AuthError, match="'exp' must be an integer"):
        viewer_from_claims({"sub": "u", "role": "admin", "inst": "nw", "exp": exp})


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.integers(min_value=0, max_value=10**12).map(str)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(exp=_JSON, nbf=_JSON | st.just(_DROP), iat=_JSON | st.just(_DROP))
def test_any_time_claims_give_a_viewer_or_auth_error(exp: Any, nbf: Any, iat: Any) -> None:
    """Whatever JSON an attacker signs into the time claims, verification ends in a
    Viewer with a bounded expiry or an AuthError, never another exception (the 500)."""
    service = TokenService(algorithm="HS256", verify_key=SECRET, signing_key=SECRET)
    token = hs256(claims(exp=exp, nbf=nbf, iat=iat))
    try:
        viewer = service.verify(token)
    except AuthError:
        return
    assert type(exp) is int
    assert viewer.expires_at == datetime.fromtimestamp(exp, UTC)
    assert exp <= time.time() + 30 * DAY + 5


# --- secret strength and exposure ----------------------------------------------------

STRONG_SECRETS = {
    "token_urlsafe": "oVb1sQm2pO2a0lqvJ8rJgC1o0iJ8nHq3wQm6x3m1Z9fS1yk8aW0eT4u7pQ2rX5vN",
    "hex-32-bytes": "3f9c2a7be14d8065c1f2a9d3e7b04c5a9e1d2f3c4b5a69788796a5b4c3d2e1f0",
    "hex-16-bytes": "94b1f7cc16ae9bf5a510a39d827f7f3e",
    "unit-test-secret": SECRET,
    "server-test-secret": SERVER_SECRET,
    "passphrase": "correct horse battery staple!!!!",
}


@pytest.mark.parametrize("secret", list(STRONG_SECRETS.values()), ids=list(STRONG_SECRETS))
def test_strong_secrets_pass(clean_env: Path, secret: str) -> None:
    assert secret_weakness(secret) is None
    assert Settings(redis_url="redis://x", jwt_secret=secret).mode is Mode.CLUSTER


def test_generated_secrets_always_pass() -> None:
    for _ in range(2000):
        assert secret_weakness(secrets.token_urlsafe(48)) is None
        assert secret_weakness(secrets.token_hex(32)) is None


@pytest.mark.parametrize(
    ("data", "period"),
    [(b"", 0), (b"x", 1), (b"xxxx", 1), (b"abab", 2), (b"ababa", 2), (b"abcab", 3), (b"abc", 3)],
)
def test_smallest_period(data: bytes, period: int) -> None:
    assert smallest_period(data) == period


def test_shannon_bits_per_byte() -> None:
    assert shannon_bits_per_byte(b"") == 0.0
    assert shannon_bits_per_byte(b"x" * 10) == 0.0
    assert shannon_bits_per_byte(bytes(range(256))) == pytest.approx(8.0)
    assert shannon_bits_per_byte(b"ab" * 8) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_problem(clean_env: Path, rsa_pems: tuple[str, str]) -> None:
    generated = Settings(data_dir=clean_env)
    assert generated.exposure_problem("127.0.0.1") is None
    assert generated.exposure_problem("localhost") is None
    problem = generated.exposure_problem("0.0.0.0")
    assert problem is not None and "needs EDUMATRIX_JWT_SECRET" in problem
    assert "development secret" in problem

    weak = Settings(data_dir=clean_env, jwt_secret="secret")  # fine on loopback
    assert weak.exposure_problem("::1") is None
    problem = weak.exposure_problem("10.1.2.3")
    assert problem is not None and "too weak" in problem

    strong = Settings(data_dir=clean_env, jwt_secret=STRONG_SECRETS["token_urlsafe"])
    assert strong.exposure_problem("0.0.0.0") is None
    public_pem, _ = rsa_pems
    rs256 = Settings(data_dir=clean_env, jwt_algorithm="RS256", jwt_public_key=public_pem)
    assert rs256.exposure_problem("0.0.0.0") is None


def test_tls_settings(clean_env: Path) -> None:
    with pytest.raises(ValidationError, match="EDUMATRIX_SSL_KEYFILE needs"):
        Settings(data_dir=clean_env, ssl_keyfile=clean_env / "key.pem")
    settings = Settings(data_dir=clean_env, ssl_certfile=clean_env / "both.pem")
    assert settings.ssl_certfile == clean_env / "both.pem" and settings.ssl_keyfile is None


# --- generated files are private -----------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_secret_file_is_private_whatever_the_umask(clean_env: Path) -> None:
    data_dir = clean_env / "fresh" / "data"
    old = os.umask(0o000)  # the worst case: nothing masked
    try:
        secret, generated = Settings(data_dir=data_dir).signing_secret()
    finally:
        os.umask(old)
    assert generated is True and secret_weakness(secret) is None
    assert _mode(data_dir / "dev-jwt-secret") == 0o600
    assert _mode(data_dir) == 0o700
    assert [p.name for p in data_dir.iterdir()] == ["dev-jwt-secret"]  # no temporary left


def test_readable_dev_secret_file_is_tightened(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env)
    settings.dev_secret_path.write_text("x" * 64 + "\n")
    settings.dev_secret_path.chmod(0o644)
    assert settings.signing_secret() == ("x" * 64, True)
    assert _mode(settings.dev_secret_path) == 0o600


def test_concurrent_first_runs_agree_on_one_secret(clean_env: Path) -> None:
    """``--workers`` and ``edumatrix token`` may generate at the same moment: one
    secret wins, and nobody reads a half-written or empty file."""
    data_dir = clean_env / "race"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: Settings(data_dir=data_dir).signing_secret(), range(32)))
    assert len(set(results)) == 1
    secret, generated = results[0]
    assert generated and len(secret) >= 32


def test_sqlite_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "db" / "edumatrix.db"
    old = os.umask(0o000)
    try:
        ensure_sqlite_dir(f"sqlite+aiosqlite:///{path}")
    finally:
        os.umask(old)
    assert path.exists() and path.stat().st_size == 0  # SQLite takes an empty file as new
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    with sqlite3.connect(path) as db:  # SQLite gives -wal and -shm the file's mode
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        for suffix in ("-wal", "-shm"):
            assert _mode(Path(f"{path}{suffix}")) == 0o600
    db.close()


def test_readable_sqlite_files_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    for name in ("old.db", "old.db-wal", "old.db-shm"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o644)
    ensure_sqlite_dir(f"sqlite+aiosqlite:///{path}?cache=shared")
    for name in ("old.db", "old.db-wal", "old.db-shm"):
        assert _mode(tmp_path / name) == 0o600
    ensure_sqlite_dir("sqlite+aiosqlite:///:memory:")
    ensure_sqlite_dir("sqlite+aiosqlite://")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.db", "old.db-shm", "old.db-wal"]
