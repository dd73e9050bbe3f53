"""Custom scalars, registered through ``StrawberryConfig.scalar_map``."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

# GraphQL's Int is 32-bit; a busy channel can pass 2^31 offsets in its lifetime.
# JSON numbers are exact up to 2^53 in every JavaScript client, which is plenty.
Long = NewType("Long", int)

MAX_LONG = 2**53 - 1


def parse_long(value: object) -> int:
    """An integer in 0..2^53-1, or a clear error (graphql-core reports it as the
    variable's or argument's own coercion error, a client error).

    Why not ``int``: it took ``"12"``, ``1.9`` (as 1) and ``true``, and let
    ``2^63`` through to Redis, whose stream ids it overflowed: the client got
    "Unexpected error." instead of being told its offset was out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Long must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_LONG:
        raise ValueError(f"Long must be between 0 and {MAX_LONG}, got {value}")
    return value


SCALAR_MAP: dict[object, ScalarDefinition] = {
    Long: strawberry.scalar(
        name="Long",
        description="Integer from 0 to 2^53-1, serialized as a JSON number (channel offsets).",
        serialize=int,
        parse_value=parse_long,
    )
}
