"""Run a Node.js script from ``tests/node`` (third-party clients, graphql-http's
audit) against a real server, and read the one JSON document it prints.

Why Node: the clients frontend teams use (graphql-ws, graphql-sse, Apollo Client,
subscriptions-transport-ws) and graphql-http's spec audit are JavaScript; testing
with them, not with our idea of them, is what says an app will work. ``make test``
installs them from ``tests/node/package-lock.json``; without Node.js the tests
that need them skip and say what is missing.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.services import missing

NODE_DIR = Path(__file__).resolve().parent / "node"


def require_node() -> str:
    """The ``node`` binary, or skip: the JavaScript clients need Node.js and
    ``npm ci --prefix tests/node`` (``make test`` runs it)."""
    node = shutil.which("node")
    if node is None:
        missing("Node.js is not installed: the JavaScript client tests need node >= 20")
    if (
        not (NODE_DIR / "node_modules" / ".installed").exists()
        and not (NODE_DIR / "node_modules" / "graphql").exists()
    ):
        missing("tests/node has no node_modules: run `npm ci --prefix tests/node`")
    return node


def run_node(script: str, *args: str, timeout: float = 60.0) -> Any:
    """Run ``tests/node/<script>`` with ``args``; its last stdout line is JSON."""
    node = require_node()
    result = subprocess.run(
        [node, str(NODE_DIR / script), *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{script} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"{script} printed nothing\nstderr:\n{result.stderr}")
    return json.loads(lines[-1])


class NodeProcess:
    """A Node.js script that prints one JSON document per line while it runs: the
    test reads each line as it comes (to act between them) and stops it by PID."""

    def __init__(self, script: str, *args: str) -> None:
        node = require_node()
        self.process = subprocess.Popen(
            [node, str(NODE_DIR / script), *args],
            cwd=NODE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()
        self._stderr: str | None = None

    def _pump(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                if line.strip():
                    self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout: float = 30.0) -> Any:
        """The next JSON line; AssertionError if none comes in ``timeout`` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"no output in {timeout} s; stderr:\n{self.stderr()}") from None
        if line is None:
            raise AssertionError(f"the script ended early; stderr:\n{self.stderr()}")
        return json.loads(line)

    def until(self, key: str, timeout: float = 30.0) -> Any:
        """Lines up to and including the first that has ``key``; returns that one."""
        end = time.monotonic() + timeout
        while True:
            line = self.line(max(end - time.monotonic(), 0.1))
            if key in line:
                return line

    def stderr(self) -> str:
        """What the script wrote to stderr (read once it has stopped)."""
        if self.process.poll() is None:
            return "(still running)"
        if self._stderr is None:
            assert self.process.stderr is not None
            with self.process.stderr:
                self._stderr = self.process.stderr.read()
        return self._stderr

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # by PID (Popen)
        self.process.wait(timeout=10)
        self._pumping.join(timeout=10)
        self.stderr()
