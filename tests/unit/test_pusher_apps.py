"""Pusher apps and signatures (api/pusher_apps.py), checked against the values in
Pusher's documentation and against the official ``pusher`` server library."""

from __future__ import annotations

import hashlib
import json

import pusher
import pytest
from pusher.pusher_client import PusherClient

from api.pusher_apps import (
    PusherApp,
    SignatureError,
    channel_auth,
    parse_apps,
    same,
    sign,
    user_auth,
    valid_socket_id,
    verify_request,
)
from streams.acl import Role

# Pusher's documented example (channels/library_auth_reference/auth-signatures).
DOC_KEY = "278d425bdf160c739803"
DOC_SECRET = "7ad3773142a6692b25b8"
DOC_APP = PusherApp("1001", DOC_KEY, DOC_SECRET, "northwood")
DOC_PRIVATE = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"


def official() -> pusher.Pusher:
    return pusher.Pusher(app_id="1001", key=DOC_KEY, secret=DOC_SECRET)


def test_private_channel_auth_matches_the_documented_example() -> None:
    assert channel_auth(DOC_APP, "1234.1234", "private-foobar", None) == f"{DOC_KEY}:{DOC_PRIVATE}"
    assert official().authenticate(channel="private-foobar", socket_id="1234.1234") == {
        "auth": f"{DOC_KEY}:{DOC_PRIVATE}"
    }


def test_presence_channel_auth_matches_the_library() -> None:
    theirs = official().authenticate(
        channel="presence-foobar",
        socket_id="1234.1234",
        custom_data={"user_id": 10, "user_info": {"name": "Mr. Channels"}},
    )
    ours = channel_auth(DOC_APP, "1234.1234", "presence-foobar", theirs["channel_data"])
    assert ours == theirs["auth"]


def test_user_auth_matches_the_library() -> None:
    theirs = official().authenticate_user(socket_id="1234.1234", user_data={"id": "12345"})
    assert user_auth(DOC_APP, "1234.1234", theirs["user_data"]) == theirs["auth"]


def test_sign_is_hex_hmac_sha256() -> None:
    assert sign(DOC_SECRET, "1234.1234:private-foobar") == DOC_PRIVATE
    assert same(DOC_PRIVATE, DOC_PRIVATE)
    assert not same(DOC_PRIVATE[:-1] + "0", DOC_PRIVATE)
    assert not same(None, DOC_PRIVATE)
    assert not same(123, DOC_PRIVATE)


@pytest.mark.parametrize(
    ("socket_id", "ok"),
    [
        ("1234.1234", True),
        ("1.2", True),
        ("1234", False),
        ("a.b", False),
        ("1.2.3", False),
        ("1.2\n", False),
        (None, False),
        (1.2, False),
    ],
)
def test_socket_ids(socket_id: object, ok: bool) -> None:
    assert valid_socket_id(socket_id) is ok


# -- the HTTP API's request signatures --------------------------------------------------


def library_request(method: str, *args: object) -> tuple[str, str, dict[str, str], bytes]:
    """What the official library would send: method, path, query, body."""
    client = PusherClient(app_id="1001", key=DOC_KEY, secret=DOC_SECRET)
    request = getattr(client, method).make_request(*args)
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    return request.method, request.path, dict(request.query_params), body


def test_library_post_and_get_requests_verify() -> None:
    method, path, query, body = library_request("trigger", ["private-a"], "ev", {"x": 1})
    verify_request(DOC_APP, method, path, query, body, now=float(query["auth_timestamp"]))
    method, path, query, body = library_request("channel_info", "presence-a", ["user_count"])
    assert query["info"] == "user_count"
    verify_request(DOC_APP, method, path, query, body, now=float(query["auth_timestamp"]))
    method, path, query, body = library_request("users_info", "presence-a")
    verify_request(DOC_APP, method, path, query, body, now=float(query["auth_timestamp"]))


def test_timestamp_window() -> None:
    method, path, query, body = library_request("trigger", ["private-a"], "ev", {"x": 1})
    stamp = float(query["auth_timestamp"])
    for now in (stamp - 600, stamp + 600):
        verify_request(DOC_APP, method, path, query, body, now=now)
    for now in (stamp - 601, stamp + 601):
        with pytest.raises(SignatureError, match="auth_timestamp"):
            verify_request(DOC_APP, method, path, query, body, now=now)
    with pytest.raises(SignatureError, match="auth_timestamp"):
        verify_request(DOC_APP, method, path, {**query, "auth_timestamp": "soon"}, body)


def test_body_md5_and_signature_cover_the_request() -> None:
    method, path, query, body = library_request("trigger", ["private-a"], "ev", {"x": 1})
    now = float(query["auth_timestamp"])
    other = body.replace(b"ev", b"EV")
    with pytest.raises(SignatureError, match="body_md5"):
        verify_request(DOC_APP, method, path, query, other, now=now)
    # A matching body_md5 for the new body, but the signature was over the old one.
    forged = {**query, "body_md5": hashlib.md5(other).hexdigest()}
    with pytest.raises(SignatureError, match="signature"):
        verify_request(DOC_APP, method, path, forged, other, now=now)
    with pytest.raises(SignatureError, match="signature"):
        verify_request(DOC_APP, method, "/apps/1002/events", query, body, now=now)
    with pytest.raises(SignatureError, match="signature"):
        verify_request(DOC_APP, "GET", path, query, body, now=now)
    with pytest.raises(SignatureError, match="signature"):
        verify_request(DOC_APP, method, path, {**query, "extra": "1"}, body, now=now)
    no_signature = {k: v for k, v in query.items() if k != "auth_signature"}
    with pytest.raises(SignatureError, match="signature"):
        verify_request(DOC_APP, method, path, no_signature, body, now=now)


def test_wrong_key_secret_or_version() -> None:
    method, path, query, body = library_request("trigger", ["private-a"], "ev", {"x": 1})
    now = float(query["auth_timestamp"])
    other = PusherApp("1001", "otherkey99", DOC_SECRET, "northwood")
    with pytest.raises(SignatureError, match="auth_key"):
        verify_request(other, method, path, query, body, now=now)
    wrong_secret = PusherApp("1001", DOC_KEY, "x" * 8 + DOC_SECRET, "northwood")
    with pytest.raises(SignatureError, match="signature"):
        verify_request(wrong_secret, method, path, query, body, now=now)
    with pytest.raises(SignatureError, match="auth_version"):
        verify_request(DOC_APP, method, path, {**query, "auth_version": "2.0"}, body, now=now)


def test_documented_http_api_example() -> None:
    """The worked example of Pusher's HTTP API reference (POST /apps/3/events)."""
    app = PusherApp("3", "278d425bdf160c739803", "7ad3773142a6692b25b8", "northwood")
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    query = {
        "auth_key": "278d425bdf160c739803",
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
        "auth_signature": "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
    }
    assert hashlib.md5(body).hexdigest() == query["body_md5"]
    verify_request(app, "POST", "/apps/3/events", query, body, now=1353088179)


# -- apps from settings --------------------------------------------------------------------


def test_parse_apps() -> None:
    apps = parse_apps(
        [
            "1001:nwkey12345:9f8e7d6c5b4a39281706f5e4d3c2b1a0:northwood",
            " 2002 : rvkey67890 : 0a1b2c3d4e5f60718293a4b5c6d7e8f9 : riverside ",
        ]
    )
    nw = apps.by_key("nwkey12345")
    assert nw is not None and apps.by_id("1001") is nw
    assert nw.institution == "northwood"
    assert apps.by_id("2002") is apps.by_key("rvkey67890")
    assert apps.only() is None
    assert nw.service.role is Role.SERVICE and nw.service.institution == "northwood"
    assert parse_apps([]).only() is None and not parse_apps([])
    assert parse_apps(["1:abcdefgh:9f8e7d6c5b4a39281706f5e4:nw"]).only() is not None


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("1001:nwkey12345:9f8e7d6c5b4a39281706f5e4d3c2b1a0", "fields"),
        ("1001:nwkey12345:secret:northwood", "secret"),
        ("1001:nwkey12345:aaaaaaaaaaaaaaaaaaaaaaaa:northwood", "secret"),
        ("1001:short:9f8e7d6c5b4a39281706f5e4d3c2b1a0:northwood", "key"),
        ("10 01:nwkey12345:9f8e7d6c5b4a39281706f5e4d3c2b1a0:northwood", "app id"),
        ("1001:nwkey12345:9f8e7d6c5b4a39281706f5e4d3c2b1a0:north wood", "institution"),
    ],
)
def test_parse_apps_refuses(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_apps([entry])


def test_ids_and_keys_are_unique() -> None:
    secret = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    with pytest.raises(ValueError, match="unique"):
        parse_apps([f"1:samekey123:{secret}:a", f"2:samekey123:{secret}:b"])
    with pytest.raises(ValueError, match="unique"):
        parse_apps([f"1:onekey1234:{secret}:a", f"1:twokey1234:{secret}:b"])


def test_channel_data_is_signed_as_given() -> None:
    data = json.dumps({"user_id": "nw-cy", "user_info": {"displayName": "Cy"}})
    signed = channel_auth(DOC_APP, "1.2", "presence-user.nw-cy", data)
    assert signed != channel_auth(DOC_APP, "1.2", "presence-user.nw-cy", data.replace(" ", ""))
    assert signed.startswith(f"{DOC_KEY}:")
