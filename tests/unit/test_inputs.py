"""Input plans build the same values as Strawberry's own conversion."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import strawberry
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
)
from strawberry.relay import GlobalID
from strawberry.types.arguments import convert_argument
from strawberry.types.base import StrawberryObjectDefinition

from api.settings import Settings
from schema.build import build_schema
from schema.inputs import DEFINITION, InputPlan, plan_inputs

SAMPLES: dict[str, Any] = {
    "String": "text",
    "ID": "id-1",
    "Int": 7,
    "Float": 1.5,
    "Boolean": True,
    "Long": 2**40,
    "JSON": {"a": [1, "b"]},
    "DateTime": "2026-12-02T00:00:00+00:00",
}


def sample(type_: GraphQLInputType, *, required_only: bool) -> Any:
    """An input value of ``type_`` as graphql-core hands it to Strawberry."""
    if isinstance(type_, GraphQLNonNull):
        return sample(type_.of_type, required_only=required_only)
    if isinstance(type_, GraphQLList):
        return [sample(type_.of_type, required_only=required_only)]
    if isinstance(type_, GraphQLEnumType):
        return next(iter(type_.values.values())).value
    if isinstance(type_, GraphQLScalarType):
        return type_.parse_value(SAMPLES[type_.name])
    assert isinstance(type_, GraphQLInputObjectType)
    return {
        name: sample(field.type, required_only=required_only)
        for name, field in type_.fields.items()
        if not required_only or isinstance(field.type, GraphQLNonNull)
    }


def both_ways(schema: strawberry.Schema, name: str, value: Any) -> tuple[Any, Any]:
    graphql_type = schema._schema.type_map[name]
    definition = graphql_type.extensions[DEFINITION]
    assert isinstance(definition, StrawberryObjectDefinition)
    cls = definition.origin
    registry, config = schema.schema_converter.scalar_registry, schema.config
    planned = convert_argument(value, cls, registry, config)
    hook, definition.from_input = definition.from_input, None
    try:
        generic = convert_argument(value, cls, registry, config)
    finally:
        definition.from_input = hook
    return planned, generic


def test_every_input_type_of_the_schema_is_planned_and_builds_the_same_value() -> None:
    schema = build_schema(Settings(jwt_secret="s" * 40))
    names = [n for n, t in schema._schema.type_map.items() if isinstance(t, GraphQLInputObjectType)]
    assert sorted(plan_inputs(schema)) == sorted(names)
    for name in names:
        graphql_type = schema._schema.type_map[name]
        assert isinstance(graphql_type, GraphQLInputObjectType)
        for required_only in (False, True):
            value = sample(graphql_type, required_only=required_only)
            planned, generic = both_ways(schema, name, value)
            assert planned == generic, (name, value)
            assert type(planned) is type(generic)


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@strawberry.input
class Inner:
    tag: str
    level: Level = Level.LOW


@strawberry.input
class Outer:
    inner: Inner
    inners: list[Inner]
    names: list[str] | None = None
    node: GlobalID | None = None
    renamed: int | None = strawberry.field(default=None, name="other")
    note: str | None = None
    untouched: str | None  # no Python default: Strawberry's implicit None


@strawberry.input
class WithMaybe:
    value: strawberry.Maybe[str]


@strawberry.type
class Query:
    @strawberry.field
    def outer(self, value: Outer) -> str:
        return repr(value)

    @strawberry.field
    def maybe(self, value: WithMaybe) -> str:
        return repr(value)


def test_nested_lists_globalids_renames_and_enums_convert_as_strawberry_does() -> None:
    schema = strawberry.Schema(query=Query)
    assert sorted(plan_inputs(schema)) == ["Inner", "Outer"]  # not the Maybe one
    value = {
        "inner": {"tag": "a", "level": Level.HIGH},
        "inners": [{"tag": "b"}, {"tag": "c", "level": Level.LOW}],
        "names": ["x", "y"],
        "node": str(GlobalID("Thing", "1")),
        "other": 3,
    }
    planned, generic = both_ways(schema, "Outer", value)
    assert planned == generic
    assert isinstance(planned.node, GlobalID) and planned.node.node_id == "1"
    assert isinstance(planned.inner, Inner) and planned.inner.level is Level.HIGH
    assert planned.names == ["x", "y"] and planned.names is not value["names"]  # a copy
    assert planned.note is None and planned.renamed == 3 and planned.untouched is None


@pytest.mark.asyncio
async def test_a_query_with_planned_inputs_executes_and_maybe_keeps_its_null_check() -> None:
    schema = strawberry.Schema(query=Query)
    plan_inputs(schema)
    assert isinstance(Outer.__strawberry_definition__.from_input, InputPlan)
    result = await schema.execute(
        "query($v: Outer!) { outer(value: $v) }",
        variable_values={"v": {"inner": {"tag": "a"}, "inners": [], "node": None}},
    )
    assert result.errors is None
    assert result.data == {
        "outer": repr(Outer(inner=Inner(tag="a"), inners=[], node=None, untouched=None)),
    }
    # Strawberry refuses an explicit null for Maybe[str] in the document itself
    rejected = await schema.execute("{ maybe(value: {value: null}) }")
    assert rejected.errors
