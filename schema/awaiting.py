"""Fields whose resolver is a coroutine: they read the database (``author``,
``sender``, ``acknowledgedByMeAt``, ...) through the context's loaders.

Why it matters: a multiplexed group executes its subscription's selection once per
message, synchronously (``api.multiplex``), and a coroutine there has nothing to
await it. ``api.plan`` therefore leaves a selection that reaches such a field to
Strawberry's own subscription path, which awaits it, per subscriber. Read from
the field's own resolver, so a new one cannot be missed.
"""

from __future__ import annotations

from graphql import GraphQLField
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField


def is_awaiting(field: GraphQLField) -> bool:
    """Whether the Strawberry field behind a graphql-core field resolves with a
    coroutine (fields Strawberry did not build never do)."""
    definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    return isinstance(definition, StrawberryField) and definition.is_async
