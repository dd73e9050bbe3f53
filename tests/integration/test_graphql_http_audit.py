"""GraphQL over HTTP, measured by graphql-http's own audit suite (``serverAudits``)
against a real server: every audit must be ``ok``. The suite's second pass runs the
same server with the fast paths off, so both HTTP paths pass it.

Beyond what the audit checks: media-type negotiation with q-values and wildcards,
406, the codes of request errors in both media types, 405 for a mutation over GET.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.node_clients import run_node
from tests.server import ServerProcess, token

GRAPHQL_RESPONSE = "application/graphql-response+json"
GRAPHQL_RESPONSE_TYPE = "application/graphql-response+json; charset=utf-8"
JSON = "application/json"


def test_graphql_http_audit_is_all_ok(embedded_server: ServerProcess) -> None:
    results = run_node("http_audit.mjs", f"{embedded_server.url}/graphql")
    assert len(results) == 61  # graphql-http 1.23.1 (tests/node/package.json)
    failed = [
        f"{r['id']} {r['status']}: {r['name']} ({r['reason']})"
        for r in results
        if r["status"] != "ok"
    ]
    assert not failed, "\n".join(failed)


def post(server: ServerProcess, body: Any, accept: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token('nw-ada')}"}
    if accept is not None:
        headers["Accept"] = accept
    return httpx.post(f"{server.url}/graphql", json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        (JSON, JSON),
        (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE_TYPE),
        # graphql-http's and Apollo Client's header
        (f"{GRAPHQL_RESPONSE}, {JSON};q=0.9", GRAPHQL_RESPONSE_TYPE),
        (f"{GRAPHQL_RESPONSE};q=0.5, {JSON}", JSON),
        (f"{JSON}, {GRAPHQL_RESPONSE}", GRAPHQL_RESPONSE_TYPE),  # same weight: the newer
        (f"{GRAPHQL_RESPONSE}, */*", GRAPHQL_RESPONSE_TYPE),
        (f"{JSON};q=0, */*", GRAPHQL_RESPONSE_TYPE),  # the exact range's q=0 wins
        (f"{JSON};charset=latin-1, {GRAPHQL_RESPONSE};q=0.1", GRAPHQL_RESPONSE_TYPE),
        (f"text/html, {JSON};q=0.2", JSON),
    ],
)
def test_the_response_has_the_accepted_media_type(
    embedded_server: ServerProcess, accept: str | None, content_type: str
) -> None:
    response = post(embedded_server, {"query": "{ me { id } }"}, accept)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.json() == {"data": {"me": {"id": "nw-ada"}}}


@pytest.mark.parametrize("accept", ["text/html", "image/png", f"{JSON};q=0", "text/*"])
def test_a_request_accepting_neither_json_type_is_406(
    embedded_server: ServerProcess, accept: str
) -> None:
    response = post(embedded_server, {"query": "{ me { id } }"}, accept)
    assert response.status_code == 406
    assert response.headers["content-type"] == JSON
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["NOT_ACCEPTABLE"]


def test_graphiql_is_still_served_to_a_browser(embedded_server: ServerProcess) -> None:
    page = httpx.get(f"{embedded_server.url}/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()


TWO_OPS = "query A { me { id } } query B { me { role } }"
REQUEST_ERRORS = [
    ({"query": "{ me { id "}, "GRAPHQL_PARSE_FAILED"),
    ({"query": "{ me { nope } }"}, "GRAPHQL_VALIDATION_FAILED"),
    ({"query": "{ me { " + "id " * 20_000 + "} }"}, "QUERY_TOO_LARGE"),
    (
        {"query": "query($n: Int!) { me { id } }", "variables": {}},
        "GRAPHQL_VALIDATION_FAILED",  # $n unused: validation, not coercion
    ),
    (
        {"query": 'query($n: Int!) { announcements(channel: "x", last: $n) { id } }'},
        "BAD_INPUT",  # a required variable missing: coercion
    ),
    (
        {
            "query": 'query($n: Int!) { announcements(channel: "x", last: $n) { id } }',
            "variables": {"n": "ten"},
        },
        "BAD_INPUT",  # a variable of the wrong type: coercion
    ),
    ({"query": TWO_OPS, "operationName": "C"}, "OPERATION_RESOLUTION_FAILURE"),
]


@pytest.mark.parametrize(("body", "code"), REQUEST_ERRORS)
def test_request_errors_keep_their_codes_in_both_media_types(
    embedded_server: ServerProcess, body: dict[str, Any], code: str
) -> None:
    # application/json: 200, "data": null, as the spec asks of that media type.
    as_json = post(embedded_server, body, JSON)
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-type"] == JSON
    assert as_json.json()["data"] is None
    assert [e["extensions"]["code"] for e in as_json.json()["errors"]] == [code]
    # application/graphql-response+json: 400 and no data entry, the same errors.
    as_new = post(embedded_server, body, GRAPHQL_RESPONSE)
    assert as_new.status_code == 400, as_new.text
    assert as_new.headers["content-type"] == GRAPHQL_RESPONSE_TYPE
    assert as_new.json() == {"errors": as_json.json()["errors"]}


@pytest.mark.parametrize("accept", [JSON, GRAPHQL_RESPONSE])
@pytest.mark.parametrize(
    ("query", "headers", "code", "data"),
    [
        # A nullable root field is nulled by its error; a non-null one nulls `data`.
        ('{ institution(id: "riverside") { id } }', {}, "NOT_FOUND", {"institution": None}),
        ("{ me { id } }", {"Authorization": ""}, "UNAUTHENTICATED", None),
    ],
)
def test_field_errors_are_200_with_data_in_both_media_types(
    embedded_server: ServerProcess,
    accept: str,
    query: str,
    headers: dict[str, str],
    code: str,
    data: dict[str, None] | None,
) -> None:
    headers = {"Authorization": f"Bearer {token('nw-ada')}", "Accept": accept, **headers}
    response = httpx.post(f"{embedded_server.url}/graphql", json={"query": query}, headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == data and [e["extensions"]["code"] for e in body["errors"]] == [code]


@pytest.mark.parametrize("accept", [JSON, GRAPHQL_RESPONSE])
@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "BAD_REQUEST"),
        (b'"just a string"', "BAD_REQUEST"),
        (b"null", "BAD_REQUEST"),
        (b'{"query": 5}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "operationName": 0}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "variables": false}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "variables": 0}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "variables": []}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "variables": "{}"}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "extensions": 0}', "BAD_REQUEST"),
        (b'{"qeury": "{ me { id } }"}', "BAD_REQUEST"),
        (b'{"query": "{ me { id } }", "variables": {"x": "\\u0000"}}', "BAD_INPUT"),
    ],
)
def test_malformed_requests_are_400_with_a_coded_json_error(
    embedded_server: ServerProcess, accept: str, content: bytes, code: str
) -> None:
    headers = {"Content-Type": JSON, "Accept": accept}
    response = httpx.post(f"{embedded_server.url}/graphql", content=content, headers=headers)
    assert response.status_code == 400, response.text
    expected = GRAPHQL_RESPONSE_TYPE if accept == GRAPHQL_RESPONSE else JSON
    assert response.headers["content-type"] == expected
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == [code]
    assert "data" not in response.json()


@pytest.mark.parametrize("accept", [JSON, GRAPHQL_RESPONSE])
def test_a_mutation_over_get_is_405(embedded_server: ServerProcess, accept: str) -> None:
    response = httpx.get(
        f"{embedded_server.url}/graphql",
        params={"query": 'mutation { markRead(ids: ["x"]) }'},
        headers={"Accept": accept},
    )
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    expected = GRAPHQL_RESPONSE_TYPE if accept == GRAPHQL_RESPONSE else JSON
    assert response.headers["content-type"] == expected
    assert response.json() == {
        "errors": [
            {
                "message": "mutations are not allowed when using GET",
                "extensions": {"code": "METHOD_NOT_ALLOWED"},
            }
        ]
    }


def test_a_429_has_no_data_entry_as_graphql_response_json(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(rate_limit_user_mutations="1/minute", rate_limit_tarpit_seconds="0")
    server.cli("migrate")
    server.start()
    mark_read = {"query": 'mutation { markRead(ids: ["1"]) }'}
    assert post(server, mark_read, GRAPHQL_RESPONSE).json() == {"data": {"markRead": 0}}
    over = post(server, mark_read, GRAPHQL_RESPONSE)
    assert over.status_code == 429
    assert over.headers["content-type"] == GRAPHQL_RESPONSE_TYPE
    assert "data" not in over.json()
    assert [e["extensions"]["code"] for e in over.json()["errors"]] == ["RATE_LIMITED"]
    as_json = post(server, mark_read, JSON)  # as before: application/json, "data": null
    assert as_json.status_code == 429 and as_json.headers["content-type"] == JSON
    assert as_json.json()["data"] is None
