"""Custom scalars."""

from __future__ import annotations

from typing import NewType

import strawberry

# GraphQL's Int is 32-bit; a busy channel can pass 2^31 offsets in its lifetime.
# JSON numbers are exact up to 2^53 in every JavaScript client, which is plenty.
Long = strawberry.scalar(
    NewType("Long", int),
    serialize=int,
    parse_value=int,
    description="Integer up to 2^53, serialized as a JSON number (channel offsets).",
)
