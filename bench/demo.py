"""The demo users, tokens, channel and data directory every bench tool uses.

Kept apart from ``servers.py`` (which needs the ``bench`` extra's psutil) so that
``publish_cost.py`` and its test run with the dev dependencies alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from api.auth import TokenService
from db.seed import demo_claims

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-fanout-Vb3q9Ztr2LkXwP7sN0yQe4HdJ6uMfC8a"  # throwaway HS256 key, loopback only
TOKENS = TokenService(algorithm="HS256", verify_key=SECRET, signing_key=SECRET)
CHANNEL = "institution:northwood:classroom:nw-math-101"
PUBLISHER_USER = "nw-ada"  # teacher of nw-math-101: may publish there
SUBSCRIBER_USER = "nw-cy"  # student of nw-math-101: may subscribe


def token(user_id: str, ttl: int = 3600) -> str:
    """A real token for a demo user, with the claims the directory gives them."""
    return TOKENS.mint(**demo_claims(user_id), ttl_seconds=ttl)


def server_env(workdir: Path) -> dict[str, str]:
    """Our server's environment for a data directory of its own in ``workdir``: the
    caller's, minus any EDUMATRIX_* it had, plus the bench secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDUMATRIX_")}
    env.update(
        EDUMATRIX_JWT_SECRET=SECRET,
        EDUMATRIX_DATA_DIR=str(workdir / ".edumatrix"),
        EDUMATRIX_LOG_LEVEL="WARNING",  # no per-request access log
        PYTHONPATH=str(REPO),
    )
    return env


def migrate_and_seed(env: dict[str, str], workdir: Path) -> None:
    """Migrate and seed the database ``env`` names, with the CLI, as a user would."""
    for step in ("migrate", "seed-demo"):
        subprocess.run(
            [sys.executable, "-m", "api", step],
            env=env,
            cwd=workdir,
            check=True,
            capture_output=True,
            timeout=120,
        )
