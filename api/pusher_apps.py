"""Pusher apps (key, secret, institution) and the signatures Pusher's protocol uses.

Every signature is HMAC-SHA256 with the app's secret, hex-encoded, compared in
constant time:

* channel authorization: ``key:hmac(socket_id ":" channel [":" channel_data])``
  (``pusher:subscribe`` to ``private-``/``presence-``);
* user authentication: ``key:hmac(socket_id "::user::" user_data)`` (``pusher:signin``);
* HTTP API requests: ``hmac(METHOD "\\n" path "\\n" sorted query)`` with
  ``auth_key``, ``auth_timestamp`` (within 600 s), ``auth_version=1.0`` and, with a
  body, ``body_md5`` in the query;
* webhooks: ``X-Pusher-Signature: hmac(body)``.

An app belongs to one institution: what it may trigger through the HTTP API is what
a service token of that institution may publish (``streams.acl``), nothing more.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streams.acl import Role, Viewer

_APP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_SOCKET_ID = re.compile(r"^\d{1,20}\.\d{1,20}$")
MIN_SECRET = 16
TIMESTAMP_WINDOW_SECONDS = 600
AUTH_VERSION = "1.0"


@dataclass(frozen=True, slots=True)
class PusherApp:
    app_id: str
    key: str
    secret: str
    institution: str

    @property
    def service(self) -> Viewer:
        """Who the app's HTTP API calls act as, for the ACL and the audit log."""
        return Viewer(
            user_id=f"pusher-app:{self.app_id}", role=Role.SERVICE, institution=self.institution
        )


class Apps:
    """The configured apps, by key (WebSocket path, signatures) and by id (HTTP API)."""

    def __init__(self, apps: Iterable[PusherApp]) -> None:
        self._by_key = {app.key: app for app in apps}
        self._by_id = {app.app_id: app for app in self._by_key.values()}

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def by_key(self, key: str) -> PusherApp | None:
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> PusherApp | None:
        return self._by_id.get(app_id)

    def all(self) -> list[PusherApp]:
        return list(self._by_key.values())

    def only(self) -> PusherApp | None:
        """The app, when exactly one is configured (the auth endpoints' default)."""
        return next(iter(self._by_key.values())) if len(self._by_key) == 1 else None


def parse_apps(entries: Iterable[str]) -> Apps:
    """``app_id:key:secret:institution`` entries, or ValueError saying what is wrong."""
    from streams.channels import ID_PATTERN

    apps: list[PusherApp] = []
    for entry in entries:
        parts = entry.split(":")
        if len(parts) != 4:
            raise ValueError(
                "each Pusher app is app_id:key:secret:institution "
                f"(got {len(parts)} fields in an entry)"
            )
        app_id, key, secret, institution = (p.strip() for p in parts)
        if not _APP_ID.fullmatch(app_id):
            raise ValueError(f"Pusher app id {app_id!r}: 1-64 letters, digits, _ or -")
        if not _KEY.fullmatch(key):
            raise ValueError(f"Pusher app {app_id}: key must be 8-64 letters, digits, _ or -")
        if len(secret) < MIN_SECRET or len(set(secret)) < 8:
            raise ValueError(
                f"Pusher app {app_id}: secret must be at least {MIN_SECRET} characters "
                "of random text (python -c 'import secrets; print(secrets.token_hex(16))')"
            )
        if not ID_PATTERN.fullmatch(institution):
            raise ValueError(f"Pusher app {app_id}: invalid institution id {institution!r}")
        apps.append(PusherApp(app_id, key, secret, institution))
    if len({a.key for a in apps}) != len(apps) or len({a.app_id for a in apps}) != len(apps):
        raise ValueError("Pusher app ids and keys must be unique")
    return Apps(apps)


def sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def valid_socket_id(socket_id: object) -> bool:
    return isinstance(socket_id, str) and _SOCKET_ID.fullmatch(socket_id) is not None


def channel_auth(app: PusherApp, socket_id: str, channel: str, channel_data: str | None) -> str:
    message = (
        f"{socket_id}:{channel}"
        if channel_data is None
        else (f"{socket_id}:{channel}:{channel_data}")
    )
    return f"{app.key}:{sign(app.secret, message)}"


def user_auth(app: PusherApp, socket_id: str, user_data: str) -> str:
    return f"{app.key}:{sign(app.secret, f'{socket_id}::user::{user_data}')}"


def same(given: object, expected: str) -> bool:
    """Constant-time comparison of a signature the client sent."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


class SignatureError(Exception):
    """An HTTP API request whose signature (or its parameters) does not hold."""


def verify_request(
    app: PusherApp,
    method: str,
    path: str,
    query: Mapping[str, str],
    body: bytes,
    now: float | None = None,
) -> None:
    """Check a signed HTTP API request; raise :class:`SignatureError` saying why not."""
    if query.get("auth_key") != app.key:
        raise SignatureError("unknown auth_key")
    if query.get("auth_version") != AUTH_VERSION:
        raise SignatureError(f"auth_version must be {AUTH_VERSION}")
    try:
        stamp = int(query.get("auth_timestamp", ""))
    except ValueError:
        raise SignatureError("auth_timestamp must be a Unix time in seconds") from None
    if abs((time.time() if now is None else now) - stamp) > TIMESTAMP_WINDOW_SECONDS:
        raise SignatureError(
            f"auth_timestamp is more than {TIMESTAMP_WINDOW_SECONDS} s from the server's clock"
        )
    if body:
        if not same(query.get("body_md5"), hashlib.md5(body, usedforsecurity=False).hexdigest()):
            raise SignatureError("body_md5 does not match the body")
    signed = "&".join(
        f"{k}={v}"
        for k, v in sorted((k.lower(), v) for k, v in query.items())
        if k != "auth_signature"
    )
    expected = sign(app.secret, f"{method.upper()}\n{path}\n{signed}")
    if not same(query.get("auth_signature"), expected):
        raise SignatureError("invalid signature")
