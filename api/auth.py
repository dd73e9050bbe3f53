"""Tokens: verify the JWT of every connection and request, mint tokens for the CLI.

Only the configured algorithm is accepted (so ``alg: none`` and HS/RS confusion are
refused by PyJWT itself), ``exp`` is mandatory, and every claim the ACL reads is
validated here once, so the rest of the code can trust a :class:`Viewer`.

Time claims (``exp``, ``nbf``, ``iat``) must be JSON integers. RFC 7519 allows a
fractional NumericDate, but PyJWT also coerces numeric strings with ``int()``, and a
claim that means one thing to PyJWT and another to our expiry timer and cache is how
a ``"exp": "1700000000"`` token outlived its expiry. Integers only, one reading.
``exp`` may lie at most ``max_ttl_seconds`` ahead (``EDUMATRIX_JWT_MAX_TTL_SECONDS``),
which bounds what a leaked token is worth; ``nbf`` and ``iat`` may not lie in the
future beyond the leeway.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt

from api.settings import Settings, read_key
from streams.acl import PLATFORM_INSTITUTION, Role, Viewer
from streams.channels import ID_PATTERN

REQUIRED_CLAIMS = ("sub", "role", "inst", "exp")
TIME_CLAIMS = ("exp", "nbf", "iat")
VERIFIED_CACHE_SIZE = 10_000
DEFAULT_MAX_TTL_SECONDS = 30 * 24 * 3600


class AuthError(Exception):
    """The credentials are missing or unacceptable; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpired(AuthError):
    """The token's ``exp`` plus the leeway has passed: the same token can only be
    refused again, so a WebSocket client is told not to retry it (``api/graphql.py``)."""

    def __init__(self) -> None:
        super().__init__("token expired")


class TokenService:
    def __init__(
        self,
        *,
        algorithm: str,
        verify_key: str,
        signing_key: str | None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 5.0,
        max_ttl_seconds: int = DEFAULT_MAX_TTL_SECONDS,
    ) -> None:
        self._algorithm = algorithm
        self._verify_key = verify_key
        self._signing_key = signing_key
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._max_ttl = max_ttl_seconds
        self._verified: OrderedDict[str, Viewer] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> tuple[TokenService, bool]:
        """Build from settings; the flag says the key is a generated dev secret."""
        if settings.jwt_algorithm == "RS256":
            assert settings.jwt_public_key is not None  # enforced by Settings
            private = settings.jwt_private_key
            service = cls(
                algorithm="RS256",
                verify_key=read_key(settings.jwt_public_key),
                signing_key=read_key(private.get_secret_value()) if private else None,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway_seconds=settings.jwt_leeway_seconds,
                max_ttl_seconds=settings.jwt_max_ttl_seconds,
            )
            return service, False
        secret, generated = settings.signing_secret()
        service = cls(
            algorithm="HS256",
            verify_key=secret,
            signing_key=secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_seconds=settings.jwt_leeway_seconds,
            max_ttl_seconds=settings.jwt_max_ttl_seconds,
        )
        return service, generated

    def deadline(self, viewer: Viewer) -> float | None:
        """When ``viewer``'s token stops being accepted (a Unix time): ``exp`` plus
        the leeway, exactly what :meth:`verify` checks. Every transport that holds a
        connection open ends it then, so a client is never accepted and cut off at
        once. None: the token has no expiry (only Python callers build such viewers)."""
        if viewer.expires_at is None:
            return None
        return viewer.expires_at.timestamp() + self._leeway

    def verify(self, token: str) -> Viewer:
        """Verify ``token``; verified tokens are remembered until they expire.

        Services publish with the same token many times a second, and signature
        checking was a fifth of a publish's cost. A token string maps to one set of
        claims, so caching the result is exact; only expiry needs checking again,
        against the same validated integer ``exp`` and leeway a fresh check uses.
        """
        cached = self._verified.get(token)
        if cached is not None:
            deadline = self.deadline(cached)
            assert deadline is not None  # only tokens with an exp are cached
            if deadline > time.time():
                self._verified.move_to_end(token)
                return cached
            del self._verified[token]
        viewer = self._verify(token)
        if viewer.expires_at is None:  # cannot happen (exp is required); never cache it
            return viewer
        self._verified[token] = viewer
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return viewer

    def _verify(self, token: str) -> Viewer:
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        self._check_times(claims)
        return viewer_from_claims(claims)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """What PyJWT leaves open: integer types and an upper bound on ``exp``.

        PyJWT has checked ``exp`` against now, and ``nbf`` and ``iat`` against the
        future, but after ``int()``, which accepts ``"1700000000"`` and ``1e20``.
        """
        for name in TIME_CLAIMS:
            numeric_date(claims, name)
        exp = claims["exp"]
        if exp > time.time() + self._max_ttl + self._leeway:
            raise AuthError(
                f"claim 'exp' lies more than {self._max_ttl} seconds ahead "
                "(the server's maximum token lifetime)"
            )

    def verify_header(self, value: str | None) -> Viewer:
        """Verify an ``Authorization`` value; the ``Bearer`` scheme is required."""
        if not value:
            raise AuthError("missing Authorization: Bearer <token>")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <token>'")
        return self.verify(token.strip())

    def signed_identity(self, value: str | None) -> tuple[str, str] | None:
        """(sub, inst) of a refused token whose signature is ours (an expired or
        otherwise invalid token we did issue), else None.

        Why: failed logins are counted and alerted on per user and institution;
        an unsigned or foreign token naming another school's user must not write
        into that school's analytics or raise alerts on its admin channel. Such
        failures are attributed to the client's address only (audit, rate limits).
        """
        token = (value or "").strip()
        scheme, _, token = token.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            claims = jwt.decode(
                token.strip(),
                self._verify_key,
                algorithms=[self._algorithm],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False},
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        sub, inst = claims.get("sub"), claims.get("inst")
        if isinstance(sub, str) and isinstance(inst, str):
            if ID_PATTERN.fullmatch(sub) and ID_PATTERN.fullmatch(inst):
                return sub, inst
        return None

    def mint(
        self,
        *,
        sub: str,
        role: Role,
        institution: str,
        departments: Iterable[str] = (),
        classrooms: Iterable[str] = (),
        ttl_seconds: int = 3600,
    ) -> str:
        if self._signing_key is None:
            raise AuthError("no signing key configured (set EDUMATRIX_JWT_PRIVATE_KEY)")
        if ttl_seconds > self._max_ttl:
            raise AuthError(
                f"a lifetime of {ttl_seconds} s is longer than the {self._max_ttl} s the "
                "server accepts (EDUMATRIX_JWT_MAX_TTL_SECONDS)"
            )
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "role": role.value,
            "inst": institution,
            "depts": sorted(set(departments)),
            "classes": sorted(set(classrooms)),
            "iat": now,
            "exp": now + ttl_seconds,
        }
        if self._issuer:
            claims["iss"] = self._issuer
        if self._audience:
            claims["aud"] = self._audience
        viewer_from_claims(claims)  # refuse to mint what we would refuse to accept
        return jwt.encode(claims, self._signing_key, algorithm=self._algorithm)


def numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    """The integer value of time claim ``name``, None when absent.

    ``bool`` is an ``int`` in Python but ``true`` is no date; floats, numeric
    strings and ``null`` are refused too (see the module docstring).
    """
    if name not in claims:
        return None
    value = claims[name]
    if type(value) is not int:
        raise AuthError(f"claim {name!r} must be an integer (seconds since the epoch)")
    return value


def _expiry(claims: Mapping[str, Any]) -> datetime | None:
    exp = numeric_date(claims, "exp")
    if exp is None:
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError) as exc:  # e.g. 10**20: past year 9999
        raise AuthError("claim 'exp' is out of range") from exc


def _id_list(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(
        isinstance(v, str) and ID_PATTERN.fullmatch(v) for v in value
    ):
        raise AuthError(f"claim {name!r} must be a list of ids")
    return frozenset(value)


def viewer_from_claims(claims: Mapping[str, Any]) -> Viewer:
    sub, inst, role = claims.get("sub"), claims.get("inst"), claims.get("role")
    if not isinstance(sub, str) or not ID_PATTERN.fullmatch(sub):
        raise AuthError("claim 'sub' must be a user id")
    if not isinstance(inst, str) or not ID_PATTERN.fullmatch(inst):
        raise AuthError("claim 'inst' must be an institution id")
    try:
        parsed_role = Role(str(role))
    except ValueError as exc:
        roles = ", ".join(r.value for r in Role)
        raise AuthError(f"claim 'role' must be one of {roles}") from exc
    if (parsed_role is Role.PLATFORM) != (inst == PLATFORM_INSTITUTION):
        # An institution's token can never carry the deployment-wide role.
        raise AuthError(f"role 'platform' goes with institution {PLATFORM_INSTITUTION!r} only")
    expires_at = _expiry(claims)
    return Viewer(
        user_id=sub,
        role=parsed_role,
        institution=inst,
        departments=_id_list(claims, "depts"),
        classrooms=_id_list(claims, "classes"),
        expires_at=expires_at,
    )
