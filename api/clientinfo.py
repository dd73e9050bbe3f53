"""Who is on the other end of a request: client IP and user agent from an ASGI scope.

Used by the audit log (every row records the client's address) and by admission
control (limits keyed by client IP). Both must agree on one answer, and neither
may be fooled by a header the client wrote itself, hence this one helper.

The rule for ``X-Forwarded-For`` (the one nginx's ``real_ip_recursive`` and
uvicorn's ``ProxyHeadersMiddleware`` use):

* the direct peer (``scope["client"]``) is the answer unless it is a trusted proxy
  (``EDUMATRIX_TRUSTED_PROXIES``, IPs or CIDRs); a client that is not a trusted
  proxy cannot choose its own address by sending the header;
* when the peer is trusted, walk the header's addresses from the right (each
  proxy appends the address it saw) and return the first one that is not a
  trusted proxy: the right-most untrusted address. Everything left of it was
  written by someone we do not trust and is ignored;
* an entry that is not an IP address ends the walk: what a trusted proxy wrote
  there is not an address, so the last address we could vouch for (the proxy
  that forwarded it) is returned, never the attacker's text;
* when every address is trusted, the left-most one is the client.

It also hands out the request id: one per HTTP request or WebSocket
connection (:func:`request_id`), kept in the scope, so whichever layer asks first
(admission control, the GraphQL view) creates it and every audit row and the
``X-Request-Id`` response header carry the same one.

Usage::

    trusted = TrustedProxies.parse(settings.trusted_proxies)   # once, at startup
    ip = client_ip(scope, trusted)                             # per request/connection
    rid = request_id(scope)                                    # same value on every call
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# User agents are attacker-chosen text stored in every audit row; 256 characters
# identifies any real browser or SDK and keeps a hostile header from filling rows.
USER_AGENT_MAX = 256
REQUEST_ID_KEY = "edumatrix.request_id"  # where request_id keeps it in the ASGI scope


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The parsed ``EDUMATRIX_TRUSTED_PROXIES``: networks whose forwarding we believe."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, values: Iterable[str]) -> TrustedProxies:
        """IPs or CIDRs (``10.0.0.0/8``, ``::1``); raises ``ValueError`` on anything else."""
        return cls(tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        address = _unmapped(address)
        return any(address in net for net in self.networks)


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` (a dual-stack socket's view of an IPv4 peer) as ``10.0.0.1``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443" as some proxies write it
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":", 1)[0]
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def _header_values(scope: Mapping[str, Any], name: bytes) -> list[str]:
    return [
        value.decode("latin-1") for key, value in scope.get("headers") or () if key.lower() == name
    ]


def client_ip(scope: Mapping[str, Any], trusted: TrustedProxies) -> str | None:
    """The client's address for an HTTP or WebSocket ASGI scope (``None``: unknown,
    e.g. a test transport or a Unix socket without a peer)."""
    client = scope.get("client")
    if not client:
        return None
    peer_text = str(client[0])
    if not trusted.networks:  # nobody's header is believed: the peer, as the server gave it
        return peer_text
    peer = _parse_ip(peer_text)
    if peer is None or peer not in trusted:
        return str(peer) if peer is not None else peer_text
    hops: list[str] = []
    for value in _header_values(scope, b"x-forwarded-for"):
        hops.extend(part for part in value.split(",") if part.strip())
    answer = peer
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            break
        answer = address
        if address not in trusted:
            break
    return str(answer)


def user_agent(scope: Mapping[str, Any], limit: int = USER_AGENT_MAX) -> str | None:
    """The ``User-Agent`` header, truncated to ``limit`` characters (``None`` if absent)."""
    values = _header_values(scope, b"user-agent")
    if not values:
        return None
    return values[0][:limit]


def request_id(scope: MutableMapping[str, Any]) -> str:
    """This request's (or WebSocket connection's) id, created on first use: 32 hex
    digits of a random UUID. Never taken from a client header: it must tell apart
    rows that a client would like to be confused."""
    rid = scope.get(REQUEST_ID_KEY)
    if rid is None:
        rid = scope[REQUEST_ID_KEY] = uuid.uuid4().hex
    return str(rid)
