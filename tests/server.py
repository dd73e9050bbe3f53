"""Run ``edumatrix`` as a real process, the way users run it, and mint test tokens."""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from api.auth import TokenService
from db.seed import demo_claims
from tests.services import free_port

# Random-looking on purpose: cluster mode refuses padded phrases such as
# "edumatrix-test-secret-" + "k" * 40 (api/secret_policy.py).
SECRET = "edumatrix-test-8cSZ_ta4Iwkq92JEQymRc4OPMG6-TxC0jHKe4RddbxPiQsC_"
TOKENS = TokenService(algorithm="HS256", verify_key=SECRET, signing_key=SECRET)
REPO = Path(__file__).resolve().parent.parent
# Admission control (api/admission.py) far above its defaults, but on: the suite
# publishes in bursts, opens many sockets with one token, and every test shares
# 127.0.0.1. tests/integration/test_admission.py sets low limits per server.
GENEROUS_ADMISSION = {
    "EDUMATRIX_RATE_LIMIT_USER_MUTATIONS": "100000/second",
    "EDUMATRIX_RATE_LIMIT_SERVICE_MUTATIONS": "100000/second",
    "EDUMATRIX_RATE_LIMIT_AUTH_FAILURES_PER_IP": "100000/minute",
    "EDUMATRIX_RATE_LIMIT_WS_MESSAGES": "100000/second",
    "EDUMATRIX_MAX_CONNECTIONS_PER_IP": "100000",
    "EDUMATRIX_MAX_CONNECTIONS_PER_SUBJECT": "100000",
    "EDUMATRIX_MAX_SUBSCRIPTIONS_PER_SUBJECT": "1000000",
}


def token(user_id: str, *, ttl: int = 600) -> str:
    """A token for a demo user, with the claims the directory gives them."""
    return TOKENS.mint(**demo_claims(user_id), ttl_seconds=ttl)


def stock_only() -> bool:
    """True in the suite's second pass, which runs servers with every fast path off
    (``make test`` sets ``EDUMATRIX_TEST_FAST_PATHS=off``), so both ways are proven."""
    return os.environ.get("EDUMATRIX_TEST_FAST_PATHS", "on") == "off"


def base_env(workdir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDUMATRIX_")}
    if stock_only():
        env["EDUMATRIX_FAST_PATHS"] = "false"
    env["EDUMATRIX_JWT_SECRET"] = SECRET
    env["EDUMATRIX_DATA_DIR"] = str(workdir / ".edumatrix")
    env["PYTHONPATH"] = str(REPO)
    env.update(GENEROUS_ADMISSION)
    env.update({f"EDUMATRIX_{k.upper()}": v for k, v in settings.items()})
    return env


# The database files ``migrate`` and ``migrate`` + ``seed-demo`` left, made once per
# test process (ServerProcess.cli).
_TEMPLATES: dict[tuple[str, ...], Path] = {}


def _sqlite_file(env: dict[str, str]) -> Path | None:
    """The embedded database file of a server's settings (None: not embedded)."""
    if env.get("EDUMATRIX_DATABASE_URL") or "EDUMATRIX_DATA_DIR" not in env:
        return None
    return Path(env["EDUMATRIX_DATA_DIR"]) / "edumatrix.db"


# Postgres databases the ``pg_url`` fixture created empty for one test, and the
# templates (``CREATE DATABASE … TEMPLATE``) made from them in this test process.
FRESH_POSTGRES: set[str] = set()
_PG_TEMPLATES: dict[tuple[str, ...], str] = {}


def _postgres_db(env: dict[str, str]) -> str | None:
    url = env.get("EDUMATRIX_DATABASE_URL", "")
    return url if url.startswith("postgresql") else None


def _prepared_step(env: dict[str, str], args: tuple[str, ...]) -> tuple[str, ...] | None:
    """The steps the database will have taken after ``args``, when a template may
    stand in for running them: ``("migrate",)`` on a new file (or a Postgres
    database the fixture made empty), ``("migrate", "seed-demo")`` on one made by a
    template of ``("migrate",)``."""
    db: Path | str | None = _sqlite_file(env) or _postgres_db(env)
    if db is None:
        return None
    fresh = db in FRESH_POSTGRES if isinstance(db, str) else not db.exists()
    if args == ("migrate",) and fresh:
        return ("migrate",)
    if args == ("seed-demo",) and _MADE.get(db) == ("migrate",):
        return ("migrate", "seed-demo")
    return None


_MADE: dict[Path | str, tuple[str, ...]] = {}  # databases and the steps that made them


def _pg_admin(url: str, *statements: str) -> None:
    """Statements on the server of ``url``, connected to its ``postgres`` database
    (a database cannot be copied or replaced while connected to it)."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1).rsplit("/", 1)[0]

    async def run() -> None:
        conn = await asyncpg.connect(f"{dsn}/postgres")
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop here (at exit, or a sync test)
        asyncio.run(run())
        return
    # In a thread of its own: async tests call cli() from a running event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _from_postgres_template(
    url: str, step: tuple[str, ...], run: Callable[[], subprocess.CompletedProcess[str]]
) -> subprocess.CompletedProcess[str]:
    """As :func:`_from_template`, for a Postgres database: the first time in a test
    process the CLI runs and the result is kept as a template database (dropped
    when the process exits); after that the test's database is made from it."""
    name = url.rsplit("/", 1)[1]
    template = _PG_TEMPLATES.get(step)
    if template is None:
        result = run()
        template = f"emx_tmpl_{os.getpid()}_{len(step)}_{secrets.token_hex(3)}"
        _pg_admin(url, f'CREATE DATABASE "{template}" TEMPLATE "{name}"')
        _PG_TEMPLATES[step] = template
        atexit.register(_pg_admin, url, f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    else:
        _pg_admin(
            url,
            f'DROP DATABASE "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE "{template}"',
        )
        result = subprocess.CompletedProcess(["edumatrix", *step[-1:]], 0, "", "")
    FRESH_POSTGRES.discard(url)
    _MADE[url] = step
    return result


def _from_template(
    env: dict[str, str],
    step: tuple[str, ...],
    run: Callable[[], subprocess.CompletedProcess[str]],
) -> subprocess.CompletedProcess[str]:
    db = _sqlite_file(env)
    if db is None:
        url = _postgres_db(env)
        assert url is not None
        return _from_postgres_template(url, step, run)
    template = _TEMPLATES.get(step)
    if template is None:
        result = run()
        template = Path(tempfile.mkdtemp(prefix="emx-db-")) / "edumatrix.db"
        shutil.copy2(db, template)  # with its mode: the server keeps its files private
        _TEMPLATES[step] = template
    else:
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the CLI makes it
        shutil.copy2(template, db)
        result = subprocess.CompletedProcess(["edumatrix", *step[-1:]], 0, "", "")
    _MADE[db] = step
    return result


class _PortTaken(Exception):
    pass


class ServerProcess:
    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.workdir = workdir
        self.env = env
        self.port = port or free_port()
        # Ours to change while no client knows it: the port was picked here and no
        # start succeeded yet (a restarted server keeps its port).
        self._port_movable = port is None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``edumatrix <args>`` for this server's settings.

        ``migrate`` then ``seed-demo`` produce the same database every time in a test
        session, and cost ~3 s of CPU in two fresh interpreters (4-7 s on Postgres);
        about a hundred servers of the suite start that way. The first time in a test
        process they run for real and the result is kept (the SQLite file, or a
        Postgres template database); after that it is copied (``CREATE DATABASE …
        TEMPLATE`` on Postgres, for a database the ``pg_url`` fixture made empty).
        Anything else runs the CLI.
        """
        step = _prepared_step(self.env, args)
        if step is not None:
            return _from_template(self.env, step, lambda: self._run(*args))
        return self._run(*args)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api", *args],
            env=self.env,
            cwd=self.workdir,
            check=True,
            capture_output=True,
            text=True,
        )

    def start(self, *, timeout: float = 30.0) -> ServerProcess:
        """Start and wait until ready. A port that another process took between
        :func:`free_port` and the bind (CI saw it twice in thousands of starts) is
        replaced by a fresh one, while no client knows this server's port yet."""
        for _ in range(3):
            try:
                self._start(timeout)
            except _PortTaken:
                self.port = free_port()
                self.log_path = self.workdir / f"server-{self.port}.log"
                continue
            self._port_movable = False
            return self
        raise RuntimeError(f"no free port after 3 tries:\n{self.log()}")

    def _start(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self._port_movable and "address already in use" in self.log():
                    raise _PortTaken
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def graphql(
        self, query: str, variables: dict[str, object] | None = None, *, as_user: str | None = None
    ) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {token(as_user)}"} if as_user else {}
        response = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers=headers,
            timeout=10,
        )
        response.raise_for_status()
        body: dict[str, object] = response.json()
        return body
