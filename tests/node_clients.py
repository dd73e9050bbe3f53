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
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


def require_node() -> str:
    """The ``node`` binary, or skip: the JavaScript clients need Node.js and
    ``npm ci --prefix tests/node`` (``make test`` runs it)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the JavaScript client tests need node >= 20")
    if (
        not (NODE_DIR / "node_modules" / ".installed").exists()
        and not (NODE_DIR / "node_modules" / "graphql").exists()
    ):
        pytest.skip("tests/node has no node_modules: run `npm ci --prefix tests/node`")
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
