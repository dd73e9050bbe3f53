"""Client IP, user agent and request id from an ASGI scope (api/clientinfo.py)."""

from __future__ import annotations

from typing import Any

import pytest

from api.clientinfo import (
    USER_AGENT_MAX,
    TrustedProxies,
    client_ip,
    request_id,
    user_agent,
)

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "::1"])


def scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
    }


def test_direct_peer_without_trusted_proxies_ignores_the_header() -> None:
    s = scope("203.0.113.7", ("X-Forwarded-For", "198.51.100.1"))
    assert client_ip(s, TrustedProxies()) == "203.0.113.7"
    assert client_ip(s, PROXIES) == "203.0.113.7"  # the peer is not one of them


def test_trusted_peer_gives_the_right_most_untrusted_address() -> None:
    # The client wrote "1.1.1.1" itself; 198.51.100.1 is what our proxy saw.
    s = scope("10.0.0.2", ("X-Forwarded-For", "1.1.1.1, 198.51.100.1, 10.0.0.9"))
    assert client_ip(s, PROXIES) == "198.51.100.1"


def test_several_headers_are_one_list_in_order() -> None:
    s = scope("10.0.0.2", ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.4"))
    assert client_ip(s, PROXIES) == "198.51.100.4"


def test_all_trusted_gives_the_left_most() -> None:
    s = scope("10.0.0.2", ("X-Forwarded-For", "10.1.1.1, 10.0.0.3"))
    assert client_ip(s, PROXIES) == "10.1.1.1"


def test_trusted_peer_without_header_is_the_answer() -> None:
    assert client_ip(scope("10.0.0.2"), PROXIES) == "10.0.0.2"


def test_garbage_in_the_header_is_never_returned() -> None:
    s = scope("10.0.0.2", ("X-Forwarded-For", "198.51.100.1, <script>, 10.0.0.5"))
    assert client_ip(s, PROXIES) == "10.0.0.5"  # the last address we can vouch for


def test_ports_brackets_and_mapped_addresses() -> None:
    assert client_ip(
        scope("::ffff:10.0.0.2", ("X-Forwarded-For", "[2001:db8::1]:443")), PROXIES
    ) == ("2001:db8::1")
    assert client_ip(scope("::1", ("X-Forwarded-For", "198.51.100.1:1234")), PROXIES) == (
        "198.51.100.1"
    )


def test_no_client_is_unknown() -> None:
    assert client_ip(scope(None), PROXIES) is None


def test_bad_proxy_setting_is_refused() -> None:
    with pytest.raises(ValueError):
        TrustedProxies.parse(["10.0.0.0/8", "proxy.internal"])


def test_user_agent_is_truncated() -> None:
    assert user_agent(scope("1.2.3.4")) is None
    assert user_agent(scope("1.2.3.4", ("User-Agent", "x" * 5000))) == "x" * USER_AGENT_MAX


def test_request_id_is_created_once_per_scope() -> None:
    s = scope("1.2.3.4")
    first = request_id(s)
    assert len(first) == 32 and int(first, 16) >= 0
    assert request_id(s) == first
    assert request_id(scope("1.2.3.4")) != first
