"""Fields whose value depends on who is looking, declared on the field itself.

Why: a multiplexed group executes a subscription once and sends the same bytes to
every member, so a selection that reads such a field must be grouped per viewer
(``api.plan``), or one viewer's answer would reach another. Declaring it where the
field is defined keeps that rule next to the resolver it is about, instead of in a
list of names elsewhere that a new field could silently miss::

    from_me: bool = strawberry.field(resolver=_from_me, metadata=VIEWER_DEPENDENT)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from graphql import GraphQLField
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

VIEWER_DEPENDENT_KEY = "edumatrix.viewer_dependent"
# Fields hold this mapping itself (dataclasses only wraps it in a read-only view),
# so the constant is read-only too: every field declared with it shares it.
VIEWER_DEPENDENT: Mapping[str, Any] = MappingProxyType({VIEWER_DEPENDENT_KEY: True})


def is_viewer_dependent(field: GraphQLField) -> bool:
    """Whether the Strawberry field behind a graphql-core field was declared with
    :data:`VIEWER_DEPENDENT` (fields Strawberry did not build never are)."""
    definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    return isinstance(definition, StrawberryField) and bool(
        definition.metadata.get(VIEWER_DEPENDENT_KEY)
    )
