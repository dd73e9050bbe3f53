"""GraphQL over HTTP: the media type of an answer, and its status.

Both HTTP paths (Strawberry's view in ``api/graphql.py`` and ``api/http_fast.py``)
answer by these rules, so they give the same status, headers and body:

- the ``Accept`` header is negotiated once per request (:func:`negotiate`):
  ``application/graphql-response+json`` or ``application/json``, by q-value and
  by how specific the matching range is; no header, ``*/*`` and ``application/*``
  mean ``application/json`` (the GraphQL-over-HTTP spec's default until its
  watershed); neither acceptable: 406. An ``Accept`` that names an event stream
  or ``multipart/mixed`` is left to Strawberry's streaming transports untouched;
- a request error (the document does not parse or validate, its variables do not
  coerce, the operation to run cannot be determined: nothing was executed) is
  answered 200 with ``"data": null`` as ``application/json``, as the spec asks of
  that media type, and 400 without a ``data`` entry as
  ``application/graphql-response+json`` (:func:`status_for`);
- requests that are not GraphQL requests at all (a body that is not JSON, a
  ``query`` that is not a string, ...) are 4xx with a JSON body
  ``{"errors": [{"message", "extensions": {"code"}}]}`` (:func:`refusal`), never
  text.

``tests/integration/test_graphql_http_audit.py`` runs graphql-http's audit suite
against a real server with and without the fast paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from functools import lru_cache

from graphql import GraphQLError
from starlette.responses import Response
from starlette.types import Scope

from api.encoding import COMPACT_JSON
from schema.errors import INTERNAL

MEDIA_KEY = "edumatrix.media"  # scope key: the negotiated Media of this request
REQUEST_ERROR_KEY = "edumatrix.request_error"  # scope key: set by the view's process_result

BAD_REQUEST = "BAD_REQUEST"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
OPERATION_RESOLUTION_FAILURE = "OPERATION_RESOLUTION_FAILURE"

_GRAPHQL_RESPONSE = "application/graphql-response+json"
_JSON = "application/json"
_STREAMS = frozenset({"text/event-stream", "multipart/mixed"})
_UTF8 = frozenset({"utf-8", "utf8"})


class Media(Enum):
    """What a request accepts; the value is the ``Content-Type`` of our answer."""

    JSON = _JSON
    GRAPHQL_RESPONSE = f"{_GRAPHQL_RESPONSE}; charset=utf-8"
    STREAM = "stream"  # SSE or multipart subscriptions: Strawberry's transports answer
    UNACCEPTABLE = "unacceptable"  # 406


def negotiate(accept: str | None) -> Media:
    """The media type to answer a request whose ``Accept`` header is ``accept``."""
    if accept is None or not accept.strip():
        return Media.JSON
    return _negotiate(accept)


@lru_cache(maxsize=256)  # clients send a handful of distinct headers
def _negotiate(accept: str) -> Media:
    # (q, specificity) of the most specific range matching each of our two types:
    # 2 for the type itself, 1 for application/*, 0 for */* (RFC 9110, 12.5.1).
    best: dict[str, tuple[float, int]] = {}
    for part in accept.split(","):
        kind, _, raw_params = part.partition(";")
        kind = kind.strip().lower()
        q = 1.0
        charset_ok = True
        for param in raw_params.split(";"):
            name, _, value = param.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"').lower()
            if name == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # a malformed range accepts nothing
            elif name == "charset":
                charset_ok = value in _UTF8  # we answer in UTF-8 only
        if kind in _STREAMS and q > 0:
            return Media.STREAM
        if not charset_ok:
            continue
        for ours in (_GRAPHQL_RESPONSE, _JSON):
            specificity = _specificity(kind, ours)
            if specificity is not None and specificity >= best.get(ours, (0.0, -1))[1]:
                best[ours] = (q, specificity)
    q_new, specificity_new = best.get(_GRAPHQL_RESPONSE, (0.0, -1))
    q_json = best.get(_JSON, (0.0, -1))[0]
    if q_new <= 0 and q_json <= 0:
        return Media.UNACCEPTABLE
    if q_new != q_json:
        return Media.GRAPHQL_RESPONSE if q_new > q_json else Media.JSON
    # Equal weights: a client that names the newer type understands it; a wildcard
    # alone means application/json.
    return Media.GRAPHQL_RESPONSE if specificity_new == 2 else Media.JSON


def _specificity(media_range: str, media_type: str) -> int | None:
    if media_range == media_type:
        return 2
    if media_range == "application/*":
        return 1
    if media_range == "*/*":
        return 0
    return None


def accept_header(scope: Scope) -> str | None:
    """All ``Accept`` headers of the request, joined as one list (RFC 9110, 5.3)."""
    found = [value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"]
    return ",".join(found) if found else None


def media_of(scope: Scope) -> Media:
    """The request's negotiated media type (``application/json`` when none was)."""
    media: Media = scope.get(MEDIA_KEY, Media.JSON)
    return media if media in (Media.JSON, Media.GRAPHQL_RESPONSE) else Media.JSON


def is_request_error(data: object, errors: Sequence[GraphQLError]) -> bool:
    """True if nothing was executed: no data, and every error is outside any field
    (parse, validation, variable coercion, operation resolution). An unexpected
    failure of the executor (masked, ``INTERNAL_SERVER_ERROR``) is not the request's
    fault and answers like a field error."""
    return (
        data is None
        and bool(errors)
        and all(
            error.path is None and (error.extensions or {}).get("code") != INTERNAL
            for error in errors
        )
    )


def status_for(media: Media, data: object, errors: Sequence[GraphQLError]) -> int:
    """The status of a GraphQL response: 400 for a request error answered as
    ``application/graphql-response+json`` (its body then has no ``data`` entry),
    else 200."""
    if media is Media.GRAPHQL_RESPONSE and is_request_error(data, errors):
        return 400
    return 200


def refusal(
    status: int,
    message: str,
    code: str,
    media: Media,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A request refused before any GraphQL ran: a JSON body with one coded error,
    as the negotiated media type (``application/json`` if none was)."""
    body = COMPACT_JSON.encode({"errors": [{"message": message, "extensions": {"code": code}}]})
    media_type = media.value if media is Media.GRAPHQL_RESPONSE else _JSON
    return Response(body, status_code=status, media_type=media_type, headers=headers)
