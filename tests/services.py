"""Find or start the real services the tests need, and say clearly what is missing.

Order for each service: the ``EDUMATRIX_TEST_*_URL`` environment variable, then the
default port on localhost, then a throwaway instance started from the installed
binaries in a temporary directory. Fault tests never use a shared instance: they
start their own :class:`RedisProcess` so they can stop and restart it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

REDIS_ENV = "EDUMATRIX_TEST_REDIS_URL"
POSTGRES_ENV = (
    "EDUMATRIX_TEST_POSTGRES_URL"  # an admin URL, e.g. postgresql://postgres@host/postgres
)


class ServiceMissing(RuntimeError):
    pass


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    Why not bind port 0: that port comes from the ephemeral range, where the kernel
    also picks the source port of every outgoing connection; between our check and
    the server's bind, one of the suite's many client connections took it once
    ("address already in use", CI). Below the range only another listener can.
    """
    low, _ = _ephemeral_range()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _redis_ok(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@dataclass
class RedisProcess:
    """A redis-server this test run owns. ``persistent`` keeps data across restarts."""

    port: int = field(default_factory=free_port)
    persistent: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emx-redis-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceMissing(
                "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
            )
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", "", "--appendonly", "yes" if self.persistent else "no"]
        args += ["--appendfsync", "always"] if self.persistent else []
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 15
        while not _redis_ok(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise ServiceMissing(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=15)
        self.process = None

    def restart(self, *, pause: float = 0.0) -> None:
        self.stop()
        time.sleep(pause)
        self.start()


def find_redis(stack: list[RedisProcess]) -> str:
    url = os.environ.get(REDIS_ENV)
    if url:
        if not _redis_ok(url):
            raise ServiceMissing(f"{REDIS_ENV}={url} does not answer PING")
        return url
    if _redis_ok("redis://127.0.0.1:6379/0"):
        return "redis://127.0.0.1:6379/0"
    server = RedisProcess().start()
    stack.append(server)
    return server.url


async def _pg_ok(url: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class PostgresProcess:
    """A throwaway cluster from initdb, for machines without a running PostgreSQL."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emx-pg-")))

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run(prefix + args, check=True, capture_output=True)

    def start(self) -> PostgresProcess:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise ServiceMissing(
                "PostgreSQL is not running on 127.0.0.1:5432 and initdb/pg_ctl are not "
                f"installed; set {POSTGRES_ENV} or install postgresql (apt-get install postgresql)"
            )
        data = self.workdir / "data"
        self._run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        opts = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1"
        self._run(
            [pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(self.workdir / "log"), "start"]
        )
        return self

    def stop(self) -> None:
        pg_ctl = _pg_bin("pg_ctl")
        if pg_ctl:
            self._run([pg_ctl, "-D", str(self.workdir / "data"), "-m", "fast", "-w", "stop"])


def find_postgres(stack: list[PostgresProcess]) -> str:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        if not asyncio.run(_pg_ok(url)):
            raise ServiceMissing(f"{POSTGRES_ENV}={url} does not accept connections")
        return url
    default = "postgresql://postgres@127.0.0.1:5432/postgres"
    if asyncio.run(_pg_ok(default)):
        return default
    server = PostgresProcess().start()
    stack.append(server)
    return server.url


def missing(reason: str) -> None:
    """Skip a test whose tool is not installed, saying which; under CI (``CI`` set)
    fail instead, so a CI machine that lost the tool cannot pass by skipping."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
