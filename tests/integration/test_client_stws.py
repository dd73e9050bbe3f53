"""The npm ``subscriptions-transport-ws`` 0.11 client (Apollo's legacy transport,
still in many apps), with ``ws`` as its WebSocket, against a real server.

It speaks the legacy ``graphql-ws`` protocol and sends every operation over the
socket: a query, a mutation and a subscription share one connection, the token
travels in ``connectionParams``. The Node side is ``tests/node/stws_client.mjs``;
this side publishes over HTTP once the script says its subscription is set up.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from tests.integration.test_embedded_ws import MATH_101, PUBLISH
from tests.node_clients import NODE_DIR, require_node, run_node
from tests.server import ServerProcess, token

SCRIPT = "stws_client.mjs"
WAIT = 30.0  # generous: node starts slowly on two busy cores; the script has its own bound


class NodeLines:
    """A running ``tests/node`` script whose output is read by threads, so every
    wait for a line is bounded and a chatty stderr never blocks it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(process.stdout,), daemon=True),
            threading.Thread(target=self.errors.extend, args=(process.stderr,), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            if line.strip():
                self.lines.put(line)
        self.lines.put(None)

    def next_json(self, wait: float = WAIT) -> Any:
        try:
            line = self.lines.get(timeout=wait)
        except queue.Empty:
            raise AssertionError(f"{SCRIPT} printed nothing for {wait}s") from None
        if line is None:
            self.process.wait(timeout=5)
            raise AssertionError(f"{SCRIPT} ended early:\n{''.join(self.errors)}")
        return json.loads(line)


@contextmanager
def node(*args: str) -> Iterator[NodeLines]:
    process = subprocess.Popen(
        [require_node(), str(NODE_DIR / SCRIPT), *args],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = NodeLines(process)
    try:
        yield lines
        process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        for reader in lines.readers:  # at end of file once the process is gone
            reader.join(timeout=5)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()


def test_query_mutation_and_subscription_over_one_legacy_socket(
    embedded_server: ServerProcess,
) -> None:
    by_http = ["http one", "http two"]
    with node(embedded_server.ws_url, token("nw-ada"), MATH_101, "3") as script:
        assert script.next_json() == {"ready": True}
        for title in by_http:
            published = embedded_server.graphql(
                PUBLISH, {"channel": MATH_101, "title": title}, as_user="nw-admin"
            )
            assert "errors" not in published, published
        report = script.next_json()
    assert script.process.returncode == 0, report

    assert report["protocol"] == "graphql-ws"
    assert report["me"] == {"data": {"me": {"id": "nw-ada", "role": "TEACHER"}}}
    mutation = report["mutation"]["data"]["publishAnnouncement"]
    assert mutation["title"] == "over subscriptions-transport-ws"
    assert mutation["channel"] == MATH_101
    events = report["events"]  # all that arrived, a quiet moment after the third
    start = report["position"]
    assert [e["announcement"]["title"] for e in events] == [mutation["title"], *by_http]
    assert events[0]["announcement"]["id"] == mutation["id"]
    assert [e["offset"] for e in events] == [start["offset"] + i for i in (1, 2, 3)]
    assert {e["epoch"] for e in events} == {start["epoch"]}
    assert [e["fromMe"] for e in events] == [True, False, False]
    assert all(e["kind"] == "announcement" and e["recovered"] for e in events)
    assert report["completed"] is False


def test_tokens_in_connection_params(embedded_server: ServerProcess) -> None:
    accepted = run_node(SCRIPT, embedded_server.ws_url, token("nw-cy"), MATH_101, "0")
    assert accepted["protocol"] == "graphql-ws"
    assert accepted["acknowledged"] is True
    assert "closeCode" not in accepted

    expired = token("nw-cy", ttl=-60)
    refused = run_node(SCRIPT, embedded_server.ws_url, expired, MATH_101, "0")
    assert "acknowledged" not in refused
    assert refused["connectionError"] == {"message": "token expired", "code": "FORBIDDEN"}
    assert refused["closeCode"] == 4403
