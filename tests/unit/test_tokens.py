"""Unit tests for api/auth.py (TokenService, viewer_from_claims) and api/settings.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from api.auth import AuthError, TokenService, viewer_from_claims
from api.settings import Mode, Settings
from streams.acl import Role, Viewer

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
    viewer = service.verify(service.mint(sub="u1", role=role, institution="nw"))
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


@pytest.mark.parametrize("secret", ["changeme", "CHANGEME", "secret", "test", "x" * 31])
def test_cluster_rejects_weak_secret(clean_env: Path, secret: str) -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
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
