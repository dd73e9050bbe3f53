"""Input objects built by a per-type plan instead of Strawberry's generic walk.

Why: Strawberry turns each input value into its dataclass with
``convert_argument``, which re-resolves every field's annotation, re-imports the
relay types and walks a chain of ``isinstance`` checks per field per request.
For the announcement mutation that was about a tenth of a publish's CPU, for four
strings and an enum that graphql-core has already coerced.

Strawberry's own hook for this is ``StrawberryObjectDefinition.from_input``. The
plan it is given here does exactly what ``convert_argument`` does, decided once per
field instead of per value:

- a field of a scalar or enum type (nullable or not) is passed through as
  graphql-core coerced it, which is what ``convert_argument`` returns for leaves;
- anything else (lists, which Strawberry copies; nested inputs; ``GlobalID``,
  which it decodes) goes to Strawberry's own conversion, field by field;
- fields without a default start as ``None``, as Strawberry's implicit default.

Types with a ``Maybe`` field keep Strawberry's path: setting ``from_input`` turns
off Strawberry's document check for explicit nulls on those, and ``Some`` wrapping
is Strawberry's to do. ``tests/unit/test_inputs.py`` builds every input type of
the schema both ways and requires equal values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING
from typing import Any

from graphql import GraphQLInputObjectType
from strawberry import Schema
from strawberry.relay.types import GlobalID
from strawberry.scalars import is_scalar
from strawberry.types.arguments import InputContext
from strawberry.types.base import (
    StrawberryMaybe,
    StrawberryObjectDefinition,
    StrawberryOptional,
)
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition
from strawberry.types.lazy_type import LazyType

DEFINITION = "strawberry-definition"


def is_leaf(type_: Any, scalars: Mapping[object, Any]) -> bool:
    """What ``convert_argument`` returns unchanged: scalars but ``GlobalID``, enums."""
    if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
        type_ = type_.of_type
    if isinstance(type_, LazyType):
        type_ = type_.resolve_type()
    if type_ is GlobalID:
        return False
    return (
        is_scalar(type_, scalars)
        or isinstance(type_, StrawberryEnumDefinition)
        or has_enum_definition(type_)
    )


class _Field:
    __slots__ = ("graphql_name", "python_name", "leaf", "type")

    def __init__(self, graphql_name: str, python_name: str, leaf: bool, type_: Any) -> None:
        self.graphql_name = graphql_name
        self.python_name = python_name
        self.leaf = leaf
        self.type = type_


class InputPlan:
    """``from_input`` for one input type. The field plan is made on first use, when
    every forward reference resolves, and again for a schema with another config or
    scalar map (the type may serve several schemas, as in the tests)."""

    def __init__(self, definition: StrawberryObjectDefinition) -> None:
        self.definition = definition
        self._for: tuple[object, object] | None = None
        self._fields: list[_Field] = []
        self._unset: dict[str, None] = {}

    def __call__(self, cls: type, value: Mapping[str, Any], context: InputContext) -> Any:
        if self._for is None or (
            self._for[0] is not context.config or self._for[1] is not context.scalar_registry
        ):
            self._plan(context)
        kwargs: dict[str, Any] = dict(self._unset)
        for field in self._fields:
            if field.graphql_name in value:
                item = value[field.graphql_name]
                kwargs[field.python_name] = (
                    item if field.leaf else context.convert(item, field.type, field.graphql_name)
                )
        return cls(**kwargs)

    def _plan(self, context: InputContext) -> None:
        fields = []
        for field in self.definition.fields:
            type_ = field.resolve_type(type_definition=self.definition)
            fields.append(
                _Field(
                    context.config.name_converter.from_field(field),
                    field.python_name,
                    is_leaf(type_, context.scalar_registry),
                    type_,
                )
            )
        self._fields = fields
        self._unset = {
            f.python_name: None
            for f in self.definition.fields
            if f.default_value is MISSING and f.default_factory is MISSING
        }
        self._for = (context.config, context.scalar_registry)


def plannable(definition: StrawberryObjectDefinition) -> bool:
    """Plain input types only: no ``Maybe`` field, no ``from_input`` of another kind."""
    if not definition.is_input:
        return False
    if definition.from_input is not None:
        return isinstance(definition.from_input, InputPlan)
    return not any(
        isinstance(f.resolve_type(type_definition=definition), StrawberryMaybe)
        for f in definition.fields
    )


def plan_inputs(schema: Schema) -> list[str]:
    """Give every plain input type of ``schema`` its plan; returns their names."""
    planned = []
    for name, graphql_type in schema._schema.type_map.items():
        if not isinstance(graphql_type, GraphQLInputObjectType):
            continue
        definition = graphql_type.extensions.get(DEFINITION)
        if isinstance(definition, StrawberryObjectDefinition) and plannable(definition):
            if definition.from_input is None:
                definition.from_input = InputPlan(definition)
            planned.append(name)
    return planned
