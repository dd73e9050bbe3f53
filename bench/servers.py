"""Start, sample and stop the servers under test and the subscriber shards.

Why pinning: on a 2-core machine the server and the client would otherwise fight
for the same core and every number would measure the scheduler. The server runs
under ``taskset -c 0`` (cores ``0..W-1`` with ``--workers W``); the driver and
the Python shards pin themselves to the last core, Node shards run under
``taskset -c`` on it. Processes are stopped by PID only.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from demo import migrate_and_seed, server_env

BENCH = Path(__file__).resolve().parent
NODE_DIR = BENCH / "node"
NODE_SHARD = NODE_DIR / "shard.mjs"
# Our server with every fast path of api/accel off: Strawberry's, uvicorn's and
# Starlette's stock paths (a tree older than api/accel ignores it).
STOCK_ENV = {"EDUMATRIX_FAST_PATHS": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile(needed: int) -> None:
    """Raise this process's soft file limit to ``needed`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


# The packages each transport of the Node shard loads (bench/node/ws.mjs, sse.mjs).
NODE_PACKAGES = {
    "ws": ("graphql", "graphql-ws", "ws"),
    "sse": ("graphql-sse",),
    "pusher": ("ws",),
}
# The Pusher app bench/node/pusher.mjs connects to (its key is APP_KEY there).
BENCH_PUSHER_APP = "bench:benchkey0001:bench-secret-5d41402abc4b2a76b9719d91:northwood"


def node_client(transport: str = "ws") -> tuple[dict[str, str] | None, str]:
    """The Node shard's versions if it can run here, else None and the reason why not."""
    node = shutil.which("node")
    if node is None:
        return None, "`node` is not on PATH"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"`node --version` failed: {exc!r}"
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        return None, f"node {version} is older than 20 (graphql-ws needs >= 20)"
    versions = {"node": version}
    for name in NODE_PACKAGES[transport]:
        manifest = NODE_DIR / "node_modules" / name / "package.json"
        if not manifest.exists():
            return None, (
                f"bench/node/node_modules has no {name}: run `npm ci --prefix bench/node` "
                "(make bench does it when npm is installed)"
            )
        versions[name] = json.loads(manifest.read_text())["version"]
    return versions, ""


PG_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def postgres_admin_url(url: str) -> str:
    """The plain ``postgresql://`` form asyncpg connects with; ValueError for other URLs."""
    for scheme in PG_SCHEMES:
        if url.startswith(scheme):
            return "postgresql://" + url.removeprefix(scheme)
    wanted = "postgresql:// or postgresql+asyncpg://"
    raise ValueError(f"not a PostgreSQL URL (want {wanted}): {redact(url)}")


def redact(url: str) -> str:
    """A URL fit for logs and the results file: the password replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def pg_admin(url: str, sql: str, limit_s: float = 30.0) -> str:
    """Run one statement on the server at ``url``; returns the server's version.

    Why a thread: ``Server.start`` and ``stop`` are synchronous but are called from
    the driver's running event loop, where ``asyncio.run`` cannot nest. Connect,
    statement and close are each bounded, and so is the whole.
    """

    async def run() -> str:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(sql, timeout=limit_s)
            return str(await conn.fetchval("SHOW server_version", timeout=10))
        finally:
            await conn.close(timeout=5)

    async def bounded() -> str:
        return await asyncio.wait_for(run(), limit_s + 20)

    with ThreadPoolExecutor(1, thread_name_prefix="pg-admin") as pool:
        return pool.submit(asyncio.run, bounded()).result()


@dataclass
class Server:
    """One server under test: ``ours`` (``python -m api serve``) or ``baseline``.

    With ``database_url`` (ours only) each start creates a fresh, uniquely named
    database on that PostgreSQL server, migrates and seeds it, and ``stop`` drops
    it (also when the start fails); otherwise ours uses SQLite in ``workdir``.
    """

    kind: str
    workers: int = 1
    redis_url: str | None = None
    database_url: str | None = None  # any database on the PostgreSQL server to use
    extra_env: dict[str, str] = field(default_factory=dict)  # set last, over the rest
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    database_name: str | None = None  # the database this start created, until dropped
    postgres_version: str | None = None

    def __post_init__(self) -> None:
        if self.database_url and self.kind != "ours":
            raise ValueError("only our server has a database")
        if self.database_url:
            postgres_admin_url(self.database_url)  # fail before anything is created

    @property
    def cpus(self) -> str:
        return "0" if self.workers == 1 else f"0-{self.workers - 1}"

    @property
    def database(self) -> str:
        """``postgres``, ``sqlite`` or ``none`` (the baseline keeps nothing)."""
        if self.kind != "ours":
            return "none"
        return "postgres" if self.database_url else "sqlite"

    @property
    def bus(self) -> str:
        return "redis" if self.redis_url else "memory"

    def _server_database_url(self) -> str:
        """The asyncpg-dialect URL of this start's database (same server, same query)."""
        assert self.database_url and self.database_name
        parts = urllib.parse.urlsplit(postgres_admin_url(self.database_url))
        return urllib.parse.urlunsplit(
            parts._replace(scheme="postgresql+asyncpg", path="/" + self.database_name)
        )

    def _create_database(self) -> None:
        assert self.database_url
        name = f"emx_bench_{os.getpid()}_{self.port}_{secrets.token_hex(3)}"
        self.database_name = name  # set first: a CREATE whose answer was lost is dropped too
        self.postgres_version = pg_admin(
            postgres_admin_url(self.database_url), f'CREATE DATABASE "{name}"'
        )

    def _drop_database(self) -> None:
        """Drop this start's database; a failure is reported, never raised."""
        if not (self.database_url and self.database_name):
            return
        name, self.database_name = self.database_name, None
        try:
            pg_admin(
                postgres_admin_url(self.database_url),
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            )
        except Exception as exc:
            print(f"[bench] could not drop database {name!r} ({exc!r}); drop it by hand",
                  file=sys.stderr)  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = server_env(self.workdir)  # the baseline reads the same secret and log level
        # Admission control off (api/admission.py; 0 = unlimited): one service token
        # floods publishes and thousands of subscribers share a token and 127.0.0.1.
        env.update({f"EDUMATRIX_{name}": "0" for name in (
            "RATE_LIMIT_USER_MUTATIONS", "RATE_LIMIT_SERVICE_MUTATIONS", "RATE_LIMIT_WS_MESSAGES",
            "MAX_CONNECTIONS_PER_IP", "MAX_CONNECTIONS_PER_SUBJECT",
            "MAX_SUBSCRIPTIONS_PER_SUBJECT")})  # fmt: skip
        if self.kind == "ours":
            env["EDUMATRIX_PUSHER_APPS"] = BENCH_PUSHER_APP
        if self.redis_url:
            env["EDUMATRIX_REDIS_URL"] = self.redis_url
            env["EDUMATRIX_REDIS_PREFIX"] = f"bench{self.port}"
        if self.database_name:
            env["EDUMATRIX_DATABASE_URL"] = self._server_database_url()
        env.update(self.extra_env)
        return env

    def _command(self) -> list[str]:
        if self.kind == "ours":
            cmd = [sys.executable, "-m", "api", "serve", "--port", str(self.port)]
        else:
            cmd = [sys.executable, str(BENCH / "baseline_server.py"), "--port", str(self.port)]
            if self.redis_url:
                cmd += ["--redis-url", self.redis_url]
        return ["taskset", "-c", self.cpus, *cmd, "--workers", str(self.workers)]

    def start(self, timeout: float = 60.0) -> None:
        """Create and fill the database (ours), start the server, wait for /readyz.

        On any failure, including Ctrl-C, whatever was started or created is
        stopped and dropped before the error goes up.
        """
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        if self.database_url:
            self._create_database()
        env = self._env()
        if self.kind == "ours":
            migrate_and_seed(env, self.workdir)
        with (self.workdir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                    if b" 200 " in sock.recv(200):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.kind} server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")[-4000:]

    def log_errors(self) -> dict[str, int]:
        """Exceptions the server logged, by their final line (e.g. 'database is locked')."""
        found: dict[str, int] = {}
        for line in (self.workdir / "server.log").read_text(errors="replace").splitlines():
            if line[:1].isalpha() and ("Error: " in line or "Exception: " in line):
                key = line[:160]
                found[key] = found.get(key, 0) + 1
        return found

    def processes(self) -> list[psutil.Process]:
        """The server and its uvicorn worker children (one tree per server)."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        """Stop the server by PID, then drop its database and remove its temp dir."""
        try:
            self._stop_process()
        finally:
            self._drop_database()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_process(self) -> None:
        if self.process is None:
            return
        children = []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for child in children:  # by PID, only the ones we started
            if child.is_running():
                child.kill()


class Sampler:
    """CPU% (100 = one core) and RSS of a process tree over a window."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cpu0 = 0.0
        self.t0 = 0.0
        self.peak_rss = 0

    def _cpu(self) -> float:
        total = 0.0
        for proc in self.server.processes():
            with_times = proc.cpu_times()
            total += with_times.user + with_times.system
        return total

    def rss(self) -> int:
        total = int(sum(p.memory_info().rss for p in self.server.processes()))
        self.peak_rss = max(self.peak_rss, total)
        return total

    def start(self) -> None:
        self.cpu0, self.t0, self.peak_rss = self._cpu(), time.monotonic(), 0
        self.rss()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        rss = self.rss()
        return {
            "cpu_percent": round(100 * (self._cpu() - self.cpu0) / wall, 1) if wall else 0.0,
            "rss_mb": round(rss / 2**20, 1),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
        }


class ShardProcess:
    """A subscriber shard child process; ``progress`` is its latest progress line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.progress: dict[str, Any] = {"received": 0, "live": 0, "closed": 0}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connect_errors: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        url: str,
        tok: str,
        channel: str,
        count: int,
        cpu: int,
        client: str = "python",
        transport: str = "ws",
    ) -> ShardProcess:
        """Start a shard: ``python`` (subscribers.py) or ``node`` (node/shard.mjs).

        Both take the same arguments and speak the same JSON lines. The Python shard
        pins itself and raises its own file limit; Node can do neither, so it runs
        under ``taskset`` and inherits the limit raised here (children inherit it).
        ``transport`` is ``ws`` (graphql-transport-ws, ``url`` is ``ws://``), ``sse``
        (graphql-sse distinct connections, ``url`` is ``http://``) or ``pusher`` (the
        Pusher protocol on ``/app/{key}``, Node only; ``url`` is ``http://``).
        """
        shard_args = ["--url", url, "--token", tok, "--channel", channel,
                      "--count", str(count), "--cpu", str(cpu)]  # fmt: skip
        if transport != "ws":
            shard_args += ["--transport", transport]
        if client == "node":
            raise_nofile(count + 256)
            cmd = ["taskset", "-c", str(cpu), "node", str(NODE_SHARD), *shard_args]
        else:
            cmd = [sys.executable, str(BENCH / "subscribers.py"), *shard_args]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            event = json.loads(line)
            if event["event"] == "progress":
                self.progress = event
            elif event["event"] == "connect_error":
                self.connect_errors.append(event["error"])
            else:
                await self.events.put(event)
        await self.events.put({"event": "exited"})

    async def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, kind: str, limit_s: float) -> dict[str, Any]:
        event = await asyncio.wait_for(self.events.get(), limit_s)
        if event["event"] != kind:
            raise RuntimeError(f"shard sent {event['event']!r}, expected {kind!r}")
        return event

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.send({"cmd": "close"})
                await asyncio.wait_for(self.proc.wait(), 30)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()


def metrics_text(port: int) -> str:
    """Our server's /metrics page; "" when there is none (the baseline)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def fast_paths_on(port: int) -> str:
    """How many of our server's fast paths are on, from its ``edumatrix_accel_enabled``
    gauges (e.g. ``7/7``); ``n/a`` for a server without them (a tree before api/accel)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics_text(port).splitlines()
              if line.startswith("edumatrix_accel_enabled{")]  # fmt: skip
    return f"{sum(v == 1 for v in values)}/{len(values)}" if values else "n/a"


HISTOGRAMS = {
    "http_p99_ms": "edumatrix_http_request_duration_seconds",
    "handoff_p99_ms": "edumatrix_delivery_latency_seconds",
}


def scrape_histograms(port: int) -> dict[str, dict[float, float]]:
    """Our server's latency histograms (cumulative bucket counts); {} for the baseline.

    Why: latencies timed by the client include the client core's own scheduling
    (publisher, shards and driver share it); these are timed inside the server.
    """
    text = metrics_text(port)
    found: dict[str, dict[float, float]] = {}
    for key, metric in HISTOGRAMS.items():
        prefix = metric + '_bucket{le="'
        for line in text.splitlines():
            if line.startswith(prefix):
                le = line[len(prefix) :].split('"', 1)[0]
                found.setdefault(key, {})[float(le)] = float(line.rsplit(" ", 1)[1])
    return found


def histogram_p99_ms(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, float | None]:
    """Upper bound (bucket edge) of the p99 of what was observed between two scrapes."""
    result: dict[str, float | None] = {}
    for key in HISTOGRAMS:
        b, a = before.get(key, {}), after.get(key, {})
        total = a.get(float("inf"), 0.0) - b.get(float("inf"), 0.0)
        result[key] = None
        if total <= 0:
            continue
        for le in sorted(a):
            if (a[le] - b.get(le, 0.0)) / total >= 0.99:
                result[key] = None if le == float("inf") else round(le * 1000, 1)
                break
    return result
