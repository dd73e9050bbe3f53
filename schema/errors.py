"""Expected failures, shown to clients with ``extensions.code``.

graphql-core copies an exception's ``extensions`` attribute into the error it
reports, so raising one of these from a resolver is all it takes. Anything else
that escapes a resolver is unexpected: it is logged and masked (:func:`should_mask`
below, which ``schema.build.build_schema`` and ``api.http_fast`` use).

    ApiError
    ├── Unauthenticated   UNAUTHENTICATED  no or bad credentials
    ├── Forbidden         FORBIDDEN        authenticated, not allowed
    ├── BadChannel        BAD_CHANNEL      channel name outside the grammar
    ├── BadInput          BAD_INPUT        an argument fails validation
    ├── NotFound          NOT_FOUND        no such object (or not visible to you)
    ├── SlowConsumer      SLOW_CONSUMER    fell too far behind (WebSocket: closed 4008)
    ├── RateLimited       RATE_LIMITED     over an admission limit (HTTP 429, Retry-After)
    ├── ShuttingDown      SHUTTING_DOWN    server stopping; resume elsewhere with since
    └── Unavailable       UNAVAILABLE      Redis could not serve it now; ``retryAfter`` says when

``client_fault`` on the class says whose fault an error is: the first seven are the
caller's and are counted as ``client_error.<code>`` events; the others (and any
unexpected exception) as ``error.<code>``, which feed errors/min and its alert.

Documents over a limit are refused at validation, before anything runs, with
``GraphQLError``s that carry their code themselves (``schema.limits``; never masked):
``QUERY_TOO_DEEP``, ``TOO_MANY_ALIASES``, ``QUERY_TOO_COMPLEX`` (too many selections
once fragments are expanded).

GraphQL's own errors get a code too (:func:`ensure_code`): ``GRAPHQL_PARSE_FAILED``
(syntax), ``QUERY_TOO_LARGE`` (over ``EDUMATRIX_MAX_QUERY_TOKENS``),
``GRAPHQL_VALIDATION_FAILED`` (validation, variables that do not coerce),
``BAD_INPUT`` (an argument value GraphQL refused); a masked unexpected error is
``INTERNAL_SERVER_ERROR``. :func:`log_errors` logs the caller's mistakes at info
without a traceback, our expected server-side errors at warning, and only
unexpected ones at error with their traceback.
"""

from __future__ import annotations

from typing import Any, ClassVar

import structlog
from graphql import GraphQLError, GraphQLSyntaxError

log = structlog.get_logger("graphql")
INTERNAL = "INTERNAL_SERVER_ERROR"


class ApiError(Exception):
    code: ClassVar[str] = "INTERNAL"
    # The caller's fault (a request that could not succeed): counted as a client
    # error event, never in errors/min and its alert, which are for server faults.
    client_fault: ClassVar[bool] = False

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code}


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"
    client_fault = True


class Forbidden(ApiError):
    code = "FORBIDDEN"
    client_fault = True


class BadChannel(ApiError):
    code = "BAD_CHANNEL"
    client_fault = True


class BadInput(ApiError):
    code = "BAD_INPUT"
    client_fault = True


class NotFound(ApiError):
    code = "NOT_FOUND"
    client_fault = True


class SlowConsumer(ApiError):
    code = "SLOW_CONSUMER"
    client_fault = True


class RateLimited(ApiError):
    """Over a limit of ``api.admission``; ``retry_after``: seconds until a rate
    admits again (at most one window), also the HTTP ``Retry-After``; None for a
    count (open subscriptions), which frees up when something closes."""

    code = "RATE_LIMITED"
    client_fault = True

    def __init__(self, message: str, limit: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, Any]:
        found: dict[str, Any] = {"code": self.code, "limit": self.limit}
        if self.retry_after is not None:
            found["retryAfter"] = self.retry_after
        return found


class ShuttingDown(ApiError):
    code = "SHUTTING_DOWN"


class Unavailable(ApiError):
    """``retry_after``: seconds after which trying again (a subscription: resubscribing
    with the same ``since``) should succeed; sent as ``extensions.retryAfter``."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, Any]:
        found: dict[str, Any] = {"code": self.code}
        if self.retry_after is not None:
            found["retryAfter"] = self.retry_after
        return found


def should_mask(error: GraphQLError) -> bool:
    """Mask unexpected exceptions; keep our own errors and GraphQL's own checks."""
    original = error.original_error
    # A GraphQLError behind another is GraphQL's own input check (e.g. a variable
    # holding an unknown enum value): meant for the client, so not masked.
    return original is not None and not isinstance(original, ApiError | GraphQLError)


def masked(error: GraphQLError) -> GraphQLError:
    """What a client may see of ``error``: an unexpected exception becomes
    "Unexpected error." at the same path and locations (as ``MaskErrors`` does)."""
    if not should_mask(error):
        return error
    return GraphQLError(
        "Unexpected error.",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": INTERNAL},
    )


def ensure_code(error: GraphQLError) -> str:
    """``error``'s ``extensions.code``, given one if it has none (GraphQL's own
    errors have none; clients need one to tell a typo from an outage)."""
    code = (error.extensions or {}).get("code")
    if isinstance(code, str):
        return code
    original = error.original_error
    if isinstance(error, GraphQLSyntaxError) or isinstance(original, GraphQLSyntaxError):
        code = "QUERY_TOO_LARGE" if "Parsing aborted" in error.message else "GRAPHQL_PARSE_FAILED"
    elif isinstance(original, GraphQLError):
        code = "BAD_INPUT"
    elif original is None:
        code = "GRAPHQL_VALIDATION_FAILED"
    else:
        code = INTERNAL
    error.extensions = {**(error.extensions or {}), "code": code}
    return code


def log_errors(errors: list[GraphQLError]) -> None:
    """Log each error at the level its cause deserves, and give it a code.

    Why: every client mistake (a typo, FORBIDDEN, a bad token) was logged at error
    level with a traceback, which buried the server faults operators must see.
    """
    for error in errors:
        code = ensure_code(error)
        original = error.original_error
        if isinstance(original, ApiError):
            level = log.info if original.client_fault else log.warning
            level("graphql.error", code=code, message=error.message, path=error.path)
        elif original is None or isinstance(original, GraphQLError):
            log.info("graphql.error", code=code, message=error.message, path=error.path)
        else:
            log.error(
                "graphql.unexpected_error",
                code=code,
                path=error.path,
                exc_info=(type(original), original, original.__traceback__),
            )
