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
    ├── ShuttingDown      SHUTTING_DOWN    server stopping; resume elsewhere with since
    └── Unavailable       UNAVAILABLE      stored, but the bus (Redis) could not take it
"""

from __future__ import annotations

from typing import Any, ClassVar

from graphql import GraphQLError


class ApiError(Exception):
    code: ClassVar[str] = "INTERNAL"

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code}


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    code = "FORBIDDEN"


class BadChannel(ApiError):
    code = "BAD_CHANNEL"


class BadInput(ApiError):
    code = "BAD_INPUT"


class NotFound(ApiError):
    code = "NOT_FOUND"


class SlowConsumer(ApiError):
    code = "SLOW_CONSUMER"


class ShuttingDown(ApiError):
    code = "SHUTTING_DOWN"


class Unavailable(ApiError):
    code = "UNAVAILABLE"


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
    )
