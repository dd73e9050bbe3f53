"""The demo users, tokens and channel every bench tool uses.

Kept apart from ``servers.py`` (which needs the ``bench`` extra's psutil) so that
``publish_cost.py`` and its test run with the dev dependencies alone.
"""

from __future__ import annotations

from api.auth import TokenService
from db.seed import demo_claims

SECRET = "bench-fanout-secret-" + "s" * 40  # a throwaway HS256 key, loopback only
TOKENS = TokenService(algorithm="HS256", verify_key=SECRET, signing_key=SECRET)
CHANNEL = "institution:northwood:classroom:nw-math-101"
PUBLISHER_USER = "nw-ada"  # teacher of nw-math-101: may publish there
SUBSCRIBER_USER = "nw-cy"  # student of nw-math-101: may subscribe


def token(user_id: str, ttl: int = 3600) -> str:
    """A real token for a demo user, with the claims the directory gives them."""
    return TOKENS.mint(**demo_claims(user_id), ttl_seconds=ttl)
