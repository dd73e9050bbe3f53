"""GraphQL enums with a description on the type and on every value.

Why not ``strawberry.enum_value(description=...)``: Strawberry takes value
descriptions only from members declared that way, which a ``StrEnum`` cannot hold
(its members must be strings, and the code compares and stores them as such) and
which the enums owned by ``streams`` (``Role``, ``Status``) do not use. This sets
them on the definition ``strawberry.enum`` made (``EnumValue.description``, a field
of Strawberry's own dataclass; the version window is pinned in ``pyproject.toml``),
and refuses a value without one, so a new member cannot ship undescribed
(``tests/unit/test_schema_descriptions.py`` checks the built schema as well).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import EnumMeta
from typing import TypeVar

import strawberry
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

E = TypeVar("E", bound=EnumMeta)


def graphql_enum(description: str, *, name: str | None = None, **values: str) -> Callable[[E], E]:
    """``strawberry.enum`` with ``description`` and one description per member,
    given by member name: ``@graphql_enum("...", LOW="...", HIGH="...")``."""

    def wrap(cls: E) -> E:
        enum = strawberry.enum(cls, name=name, description=description)
        definition = _definition(enum)
        members = {value.name for value in definition.values}
        if members != set(values):
            missing, extra = sorted(members - set(values)), sorted(set(values) - members)
            raise ValueError(f"{definition.name}: undescribed {missing}, unknown {extra}")
        for value in definition.values:
            value.description = values[value.name]
        return enum

    return wrap


def _definition(enum: object) -> StrawberryEnumDefinition:
    if not has_enum_definition(enum):  # pragma: no cover - strawberry.enum just made it
        raise TypeError(f"{enum!r} is not a Strawberry enum")
    return enum.__strawberry_definition__
