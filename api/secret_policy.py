"""When a signing secret is strong enough, and when a listening address is private.

Why a rule of our own: RFC 7518 §3.2 asks for an HS256 key of at least 256 bits,
but a length check alone lets ``changeme`` × 4 or 32 spaces through, and those are
what people paste into a deployment. Nothing can measure a string's true entropy;
this is a floor that refuses the shapes of secrets typed by hand. A secret is
refused when it is

* shorter than ``MIN_SECRET_BYTES`` (32) bytes, or whitespace only;
* a known placeholder (``changeme``, ``secret``, ``jwt-secret``, …), ignoring case
  and punctuation, or a repetition of one;
* a repetition of a shorter pattern (``abcd`` × 8, ``changeme`` × 4, one character
  over and over): its smallest period is at most half its length;
* below ``MIN_BITS_PER_BYTE`` (2.5) bits of Shannon entropy per byte, estimated
  from how often each byte value occurs. Generated secrets clear it easily:
  ``secrets.token_urlsafe(48)`` has ~5.2, ``openssl rand -hex 32`` ~3.8 (never
  below 3 in 10,000 draws of the shortest, 32-character, hex key); a short phrase
  padded to length (``my-secret-`` + 30 × ``k``) has ~2.

The bind address decides whether the rule applies in embedded mode: a server that
only listens on loopback can keep its generated development secret.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

MIN_SECRET_BYTES = 32
MIN_BITS_PER_BYTE = 2.5
PLACEHOLDERS = frozenset(
    {
        "changeme",
        "changeit",
        "secret",
        "secretkey",
        "jwtsecret",
        "jwtsecretkey",
        "mysecret",
        "supersecret",
        "password",
        "default",
        "dev",
        "development",
        "test",
        "example",
        "xxx",
        "todo",
        "edumatrix",
    }
)
GENERATE_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to sign tokens on a shared network, or None."""
    raw = secret.encode()
    if not secret.strip():
        return "it is empty or whitespace only"
    if len(raw) < MIN_SECRET_BYTES:
        return f"it is {len(raw)} bytes long"
    unit = raw[: smallest_period(raw)]
    if _NOT_ALNUM.sub("", secret.lower()) in PLACEHOLDERS or (
        _NOT_ALNUM.sub("", unit.decode(errors="ignore").lower()) in PLACEHOLDERS
    ):
        return "it is a known placeholder"
    if len(unit) * 2 <= len(raw):
        return f"it repeats a {len(unit)}-byte pattern"
    bits = shannon_bits_per_byte(raw)
    if bits < MIN_BITS_PER_BYTE:
        return f"it has {bits:.1f} bits of entropy per byte (at least {MIN_BITS_PER_BYTE} needed)"
    return None


def weak_secret_message(name: str, reason: str) -> str:
    """The one wording for every refusal, so operators recognise it."""
    return (
        f"{name} is too weak ({reason}): it must be at least {MIN_SECRET_BYTES} bytes "
        f"of random text, not a placeholder or a repeated pattern; {GENERATE_HINT}"
    )


def smallest_period(data: bytes) -> int:
    """The smallest p with data[i] == data[i - p] for every i >= p (KMP failure
    function); ``len(data)`` when nothing shorter repeats."""
    failure = [0] * len(data)
    k = 0
    for i in range(1, len(data)):
        while k and data[i] != data[k]:
            k = failure[k - 1]
        if data[i] == data[k]:
            k += 1
        failure[i] = k
    return len(data) - (failure[-1] if data else 0)


def shannon_bits_per_byte(data: bytes) -> float:
    """Entropy of the byte frequencies: 0 for one repeated byte, 8 at most."""
    if not data:
        return 0.0
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in Counter(data).values())


def is_loopback(host: str) -> bool:
    """True when ``host`` (as given to ``--host``) only accepts local connections.

    A name other than ``localhost`` may resolve anywhere, and ``0.0.0.0`` or ``::``
    mean every interface, so both count as exposed.
    """
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
