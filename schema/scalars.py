"""Custom scalars, registered through ``StrawberryConfig.scalar_map``."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

# GraphQL's Int is 32-bit; a busy channel can pass 2^31 offsets in its lifetime.
# JSON numbers are exact up to 2^53 in every JavaScript client, which is plenty.
Long = NewType("Long", int)

SCALAR_MAP: dict[object, ScalarDefinition] = {
    Long: strawberry.scalar(
        name="Long",
        description="Integer up to 2^53, serialized as a JSON number (channel offsets).",
        serialize=int,
        parse_value=int,
    )
}
