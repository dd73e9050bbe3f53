"""``edumatrix serve`` refuses weak secrets wherever other machines can connect, and
the files it generates (dev secret, SQLite database and its WAL) are private."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, base_env
from tests.services import free_port

STRONG = "k3Jf9-xQ2mZp7LwT0vRy5sB8nCd4HgUa6EiOjN1tKqPl"


def serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``edumatrix serve``; every case here must exit before it binds anything,
    and the timeout ends one that would have served (the bug)."""
    return subprocess.run(
        [sys.executable, "-m", "api", "serve", "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_generated_dev_secret_refused_off_loopback(tmp_path: Path, host: str) -> None:
    env = base_env(tmp_path)
    del env["EDUMATRIX_JWT_SECRET"]
    result = serve(env, "--host", host)
    assert result.returncode != 0
    assert "needs EDUMATRIX_JWT_SECRET" in result.stderr
    assert "not loopback" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("secret", ["secret", "changeme" * 4, " " * 32, "x" * 64])
def test_weak_secret_refused_off_loopback_in_embedded_mode(tmp_path: Path, secret: str) -> None:
    env = base_env(tmp_path, jwt_secret=secret)
    result = serve(env, "--host", "0.0.0.0")
    assert result.returncode != 0
    assert "EDUMATRIX_JWT_SECRET is too weak" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "secret",
    ["changeme" * 4, " " * 32, "x" * 48, "CHANGEME" * 4, "abcd1234" * 5, "jwt-secret" * 4],
)
def test_weak_secret_refused_in_cluster_mode(tmp_path: Path, secret: str) -> None:
    # Validation runs before anything connects, so this Redis needs no server.
    env = base_env(tmp_path, jwt_secret=secret, redis_url="redis://127.0.0.1:1/0")
    result = serve(env)  # on loopback: cluster mode checks everywhere
    assert result.returncode != 0
    assert "EDUMATRIX_JWT_SECRET is too weak" in result.stderr
    assert "at least 32 bytes" in result.stderr


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Children inherit it: 022 is what makes files world-readable by default."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_generated_files_are_private(
    usual_umask: None, make_server: Callable[..., ServerProcess]
) -> None:
    server = make_server()
    del server.env["EDUMATRIX_JWT_SECRET"]  # embedded mode's generated dev secret
    data_dir = Path(server.env["EDUMATRIX_DATA_DIR"])
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    minted = server.cli(
        "token", "--sub", "nw-cy", "--role", "student", "--institution", "northwood"
    ).stdout.strip()
    response = httpx.post(
        f"{server.url}/graphql",
        json={"query": "{ me { id } }"},
        headers={"Authorization": f"Bearer {minted}"},
        timeout=10,
    )
    assert response.json() == {"data": {"me": {"id": "nw-cy"}}}
    files = {
        name: data_dir / name
        for name in ("dev-jwt-secret", "edumatrix.db", "edumatrix.db-wal", "edumatrix.db-shm")
    }
    modes = {name: oct(_mode(path)) for name, path in files.items()}  # while serving: WAL on
    assert modes == dict.fromkeys(files, oct(0o600)), modes
    assert _mode(data_dir) == 0o700


def test_embedded_loopback_keeps_generated_secret(
    usual_umask: None, make_server: Callable[..., ServerProcess]
) -> None:
    """The other side of the rule: on 127.0.0.1 nothing changes for `make run`."""
    server = make_server()
    del server.env["EDUMATRIX_JWT_SECRET"]
    server.cli("migrate")
    server.start()
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_strong_secret_passes_the_exposure_check(tmp_path: Path) -> None:
    """``--host 0.0.0.0`` with a strong secret gets past the check (and then stops
    at the unmigrated database, so nothing keeps listening on every interface)."""
    env = base_env(tmp_path, jwt_secret=STRONG)
    result = serve(env, "--host", "0.0.0.0")
    assert "too weak" not in result.stderr and "not loopback" not in result.stderr
    assert "edumatrix migrate" in result.stderr, result.stderr[-2000:]
