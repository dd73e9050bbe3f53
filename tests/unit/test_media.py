"""Accept negotiation and the status of GraphQL responses (api/media.py)."""

from __future__ import annotations

import pytest
from graphql import GraphQLError

from api.media import Media, is_request_error, negotiate, status_for

NEW = "application/graphql-response+json"
JSON = "application/json"


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, Media.JSON),
        ("", Media.JSON),
        ("*/*", Media.JSON),
        ("application/*", Media.JSON),
        (JSON, Media.JSON),
        (NEW, Media.GRAPHQL_RESPONSE),
        (f"{NEW}; charset=utf-8", Media.GRAPHQL_RESPONSE),
        (f"{NEW}, {JSON};q=0.9", Media.GRAPHQL_RESPONSE),
        (f"{JSON};q=0.9,{NEW}", Media.GRAPHQL_RESPONSE),
        (f"{NEW};q=0.8, {JSON}", Media.JSON),
        (f"{JSON}, {NEW}", Media.GRAPHQL_RESPONSE),  # equal weights, both named
        (f"{NEW}, */*", Media.GRAPHQL_RESPONSE),
        (f"{JSON}, */*", Media.JSON),
        (f"{JSON};q=0, */*", Media.GRAPHQL_RESPONSE),  # the most specific range decides
        (f"{NEW};q=0, application/*", Media.JSON),
        ("APPLICATION/GRAPHQL-RESPONSE+JSON", Media.GRAPHQL_RESPONSE),
        (f"{JSON}; charset=utf8", Media.JSON),
        (f"{JSON}; charset=iso-8859-1", Media.UNACCEPTABLE),  # we answer in UTF-8 only
        (f"{JSON}; charset=iso-8859-1, {NEW};q=0.1", Media.GRAPHQL_RESPONSE),
        (f"{JSON};q=oops", Media.UNACCEPTABLE),
        ("text/html", Media.UNACCEPTABLE),
        ("text/*, image/png", Media.UNACCEPTABLE),
        (f"{JSON};q=0", Media.UNACCEPTABLE),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", Media.JSON),
        ("text/event-stream", Media.STREAM),
        (f'multipart/mixed;subscriptionSpec="1.0", {JSON}', Media.STREAM),
        (f"text/event-stream;q=0, {JSON}", Media.JSON),
    ],
)
def test_negotiate(accept: str | None, media: Media) -> None:
    assert negotiate(accept) is media


def test_the_content_types() -> None:
    assert Media.JSON.value == JSON
    assert Media.GRAPHQL_RESPONSE.value == f"{NEW}; charset=utf-8"


def _error(path: list[str | int] | None = None, code: str | None = None) -> GraphQLError:
    return GraphQLError("e", path=path, extensions={"code": code} if code else None)


@pytest.mark.parametrize(
    ("data", "errors", "request_error"),
    [
        (None, [_error()], True),  # parse, validation, coercion, operation resolution
        (None, [_error(), _error(code="BAD_INPUT")], True),
        (None, [_error(["me"])], False),  # a field error that nulled the root
        ({"me": None}, [_error(["me"])], False),
        ({"me": None}, [], False),
        (None, [], False),
        (None, [_error(code="INTERNAL_SERVER_ERROR")], False),  # the executor failed
    ],
)
def test_request_errors(data: object, errors: list[GraphQLError], request_error: bool) -> None:
    assert is_request_error(data, errors) is request_error
    assert status_for(Media.GRAPHQL_RESPONSE, data, errors) == (400 if request_error else 200)
    assert status_for(Media.JSON, data, errors) == 200
