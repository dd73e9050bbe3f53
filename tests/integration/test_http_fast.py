"""The HTTP fast path (api/http_fast.py) answers exactly what Strawberry's view does.

Two servers with the same demo data, one with EDUMATRIX_HTTP_FAST_PATH=false, get
the same requests in the same order; status, content type and body must be equal
(ids and timestamps of new rows aside), with either media type accepted
(api/media.py). The fast server must really have used the fast path, and the other
must not have.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_embedded_ws import MATH_101
from tests.server import ServerProcess, token

PUBLISH = """mutation Publish($channel: String!, $title: String!, $priority: Priority = NORMAL) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b", priority: $priority}) {
    id channel authorId title body priority createdAt __typename
  }
}"""
TWO_OPS = "query A { me { id } } query B { me { id role institution { id name } } }"
DEEP = "{ institutions { departments { id } " + "__typename " * 3 + "} }"

# (user or None, raw token override, method, content type, body or query params)
Case = tuple[str | None, str | None, str, str, Any]


def post(user: str | None, body: Any, *, raw_token: str | None = None) -> Case:
    return (user, raw_token, "POST", "application/json", body)


CASES: list[Case] = [
    post("nw-admin", {"query": "{ institutions { id name departments { id name } } }"}),
    post("nw-ada", {"query": "query Q { me { id role } }", "operationName": "Q"}),
    post("nw-ada", {"query": TWO_OPS, "operationName": "B"}),
    post("nw-ada", {"query": TWO_OPS}),  # no operation name: Strawberry's error
    post("nw-ada", {"query": TWO_OPS, "operationName": "C"}),  # unknown operation
    post("nw-ada", {"query": '{ institution(id: "riverside") { id } }'}),  # NOT_FOUND
    post("nw-ada", {"query": f'{{ announcements(channel: "{MATH_101}", last: 0) {{ id }} }}'}),
    post("nw-ada", {"query": '{ announcements(channel: "nonsense::") { id } }'}),  # BAD_CHANNEL
    post(None, {"query": "{ me { id } }"}),  # UNAUTHENTICATED
    post(None, {"query": "{ me { id } }"}, raw_token="not-a-token"),
    post("nw-ada", {"query": PUBLISH, "variables": {"channel": MATH_101, "title": "hello"}}),
    post("nw-cy", {"query": PUBLISH, "variables": {"channel": MATH_101, "title": "no"}}),
    post("nw-ada", {"query": PUBLISH, "variables": {"channel": MATH_101, "title": "   "}}),
    post(
        "nw-ada",
        {"query": PUBLISH, "variables": {"channel": MATH_101, "title": "x", "priority": "LOUD"}},
    ),
    post("nw-ada", {"query": PUBLISH, "variables": {"channel": MATH_101}}),  # missing variable
    post("nw-ada", {"query": PUBLISH, "variables": {"channel": MATH_101, "title": 5}}),
    post(
        "nw-ada",
        {
            "query": f"""mutation {{
              a: publishAnnouncement(input: {{channel: "{MATH_101}", title: "ok", body: "b",
                 priority: NORMAL}}) {{ title }}
              b: publishAnnouncement(input: {{channel: "institution:riverside", title: "no",
                 body: "b", priority: NORMAL}}) {{ title }}
            }}"""
        },
    ),
    post(
        "nw-ada",
        {
            "query": "query { ...F me { ...M } } fragment F on Query { __typename } "
            "fragment M on Me { id }",
            "variables": None,
            "extensions": {"persistedQuery": None},
        },
    ),
    post("nw-ada", {"query": "{ me { id "}),  # syntax error
    post("nw-ada", {"query": "{ me { nope } }"}),  # validation error
    post("nw-ada", {"query": DEEP}),
    post("nw-ada", {"query": 5}),
    post("nw-ada", {"query": "{ me { id } }", "variables": [1]}),
    # Falsy but not null: not a JSON object either, so Strawberry's 400.
    *(post("nw-ada", {"query": "{ me { id } }", "variables": v}) for v in (0, False, "", [])),
    post("nw-ada", [{"query": "{ me { id } }"}]),  # a batch
    post("nw-ada", "just a string"),
    ("nw-ada", None, "POST", "application/json", b"{not json"),
    ("nw-ada", None, "POST", "text/plain", {"query": "{ me { id } }"}),
    ("nw-ada", None, "GET", "", {"query": "{ me { id } }"}),
    ("nw-ada", None, "GET", "", {"query": PUBLISH}),  # mutations are refused over GET
    post(
        "nw-ada",
        {"query": 'subscription { channel(name: "institution:northwood") { offset } }'},
    ),
]

JSON = "application/json"
GRAPHQL_RESPONSE = "application/graphql-response+json"
# The same cases as application/graphql-response+json (request errors: 400, no data
# entry), and other Accept headers; no mutation that succeeds, so both databases
# keep the announcements the test reads back at the end.
NEGOTIATED: list[tuple[str, Case]] = [
    *((GRAPHQL_RESPONSE, case) for case in CASES if "mutation" not in str(case[4])),
    (GRAPHQL_RESPONSE, ("nw-ada", None, "GET", "", {"query": PUBLISH})),  # 405
    *(
        (GRAPHQL_RESPONSE, post("nw-ada", {"query": PUBLISH, "variables": variables}))
        for variables in (
            {"channel": MATH_101},  # missing variable
            {"channel": MATH_101, "title": 5},
            {"channel": MATH_101, "title": "x", "priority": "LOUD"},
        )
    ),
    *(
        (accept, post("nw-ada", {"query": "query Q { me { id role } }"}))
        for accept in (
            f"{GRAPHQL_RESPONSE}, {JSON};q=0.9",
            f"{GRAPHQL_RESPONSE};q=0.5, {JSON}",
            "*/*",
            "application/*",
            "",
            "text/html",  # 406
        )
    ),
    ("text/html", post("nw-ada", {"query": "{ me { id "})),
    (f"{JSON};q=0.9, {GRAPHQL_RESPONSE}", post("nw-ada", {"query": "{ me { nope } }"})),
]


def send(server: ServerProcess, case: Case, accept: str = JSON) -> tuple[int, str, Any]:
    user, raw_token, method, content_type, body = case
    headers = {"Accept": accept}
    if user is not None or raw_token is not None:
        headers["Authorization"] = f"Bearer {raw_token or token(user or '')}"
    url = f"{server.url}/graphql"
    if method == "GET":
        response = httpx.get(url, params=body, headers=headers, timeout=10)
    else:
        headers["Content-Type"] = content_type
        content = body if isinstance(body, bytes) else httpx_json(body)
        response = httpx.post(url, content=content, headers=headers, timeout=10)
    media = response.headers.get("content-type", "")
    try:
        return response.status_code, media, normalize(response.json())
    except ValueError:
        return response.status_code, media, response.text


def httpx_json(body: Any) -> bytes:
    return json.dumps(body).encode()


def normalize(value: Any) -> Any:
    """Drop what differs between two databases: new rows' ids and timestamps."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k not in ("id", "createdAt")}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def http_operations(server: ServerProcess, path: str) -> float:
    prefix = f'edumatrix_http_operations_total{{path="{path}"}} '
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def servers(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> Iterator[tuple[ServerProcess, ...]]:
    pair = (
        make_server(data_dir=str(tmp_path / "fast")),
        make_server(data_dir=str(tmp_path / "plain"), http_fast_path="false"),
    )
    for server in pair:
        server.cli("migrate")
        server.cli("seed-demo")
        server.start()
    yield pair


@pytest.mark.fast_paths
def test_fast_path_answers_like_strawberry(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, plain = servers
    for case in CASES:
        assert send(fast, case) == send(plain, case), case
    for accept, case in NEGOTIATED:
        assert send(fast, case, accept) == send(plain, case, accept), (accept, case)
    # The fast server executed the valid queries and mutations itself, the
    # one-root-field ones (the publishes among them) without graphql-core's executor...
    assert http_operations(fast, "fast") >= 4
    assert http_operations(fast, "direct") >= 10
    # ...graphql-response+json ones too.
    before = http_operations(fast, "direct")
    answer = send(fast, post("nw-ada", {"query": "query Q { me { id } }"}), GRAPHQL_RESPONSE)
    assert answer == (200, f"{GRAPHQL_RESPONSE}; charset=utf-8", {"data": {"me": {}}})
    assert http_operations(fast, "direct") == before + 1
    assert http_operations(plain, "fast") == http_operations(plain, "direct") == 0
    # ...and both stored the same announcements, with audit rows.
    query = f'{{ announcements(channel: "{MATH_101}", last: 10) {{ title authorId }} }}'
    assert send(fast, post("nw-ada", {"query": query})) == send(
        plain, post("nw-ada", {"query": query})
    )
    _, _, body = send(fast, post("nw-ada", {"query": query}))
    assert [a["title"] for a in body["data"]["announcements"]] == ["hello", "ok"]


def send_in_pieces(server: ServerProcess, body: bytes, pieces: int = 3) -> tuple[int, Any]:
    """POST ``body`` chunked, pausing between pieces so the server receives several
    ``http.request`` messages (``more_body``) instead of one."""
    size = -(-len(body) // pieces)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]
            time.sleep(0.05)

    headers = {"Authorization": f"Bearer {token('nw-ada')}", "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/graphql", content=chunks(), headers=headers, timeout=10)
    return response.status_code, normalize(response.json())


@pytest.mark.fast_paths
def test_fast_path_reads_a_body_sent_in_pieces(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    fast, plain = servers
    body = httpx_json({"query": PUBLISH, "variables": {"channel": MATH_101, "title": "pieces"}})
    before = http_operations(fast, "direct")
    answer = send_in_pieces(fast, body)
    assert answer == send_in_pieces(plain, body)
    assert answer[0] == 200 and answer[1]["data"]["publishAnnouncement"]["title"] == "pieces"
    assert http_operations(fast, "direct") == before + 1
