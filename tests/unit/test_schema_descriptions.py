"""The schema as a frontend developer reads it (GraphiQL, codegen, IDE hovers):
every type, field, argument, input field and enum value says what it is."""

from __future__ import annotations

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    specified_scalar_types,
)

from api.settings import Settings
from schema.build import build_schema


def undescribed(schema: GraphQLSchema) -> list[str]:
    """Coordinates (``Type``, ``Type.field``, ``Type.field(arg:)``, ``Enum.VALUE``) of
    everything without a description; introspection types and built-in scalars are
    GraphQL's own."""
    missing: list[str] = []

    def check(coordinate: str, description: str | None) -> None:
        if not (description or "").strip():
            missing.append(coordinate)

    for name, named in sorted(schema.type_map.items()):
        if name.startswith("__") or name in specified_scalar_types:
            continue
        check(name, named.description)
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in named.fields.items():
                check(f"{name}.{field_name}", field.description)
                for arg_name, arg in field.args.items():
                    check(f"{name}.{field_name}({arg_name}:)", arg.description)
        elif isinstance(named, GraphQLInputObjectType):
            for field_name, input_field in named.fields.items():
                check(f"{name}.{field_name}", input_field.description)
        elif isinstance(named, GraphQLEnumType):
            for value_name, value in named.values.items():
                check(f"{name}.{value_name}", value.description)
        else:
            assert isinstance(named, GraphQLScalarType | GraphQLUnionType), named
    return missing


def test_everything_in_the_schema_is_described() -> None:
    schema = build_schema(Settings())._schema
    assert undescribed(schema) == []


def test_the_check_finds_what_is_missing() -> None:
    """The test above is only worth something if the walk reaches every kind."""
    schema = build_schema(Settings())._schema
    types: dict[str, GraphQLNamedType] = schema.type_map  # type: ignore[assignment]
    query, role, position = types["Query"], types["Role"], types["PositionInput"]
    assert isinstance(query, GraphQLObjectType) and isinstance(role, GraphQLEnumType)
    assert isinstance(position, GraphQLInputObjectType)
    saved = (
        query.description,
        query.fields["alert"].description,
        query.fields["alert"].args["id"].description,
        position.fields["epoch"].description,
        role.values["ADMIN"].description,
    )
    try:
        query.description = None
        query.fields["alert"].description = ""
        query.fields["alert"].args["id"].description = None
        position.fields["epoch"].description = " "
        role.values["ADMIN"].description = None
        assert undescribed(schema) == [
            "PositionInput.epoch",
            "Query",
            "Query.alert",
            "Query.alert(id:)",
            "Role.ADMIN",
        ]
    finally:
        query.description = saved[0]
        query.fields["alert"].description = saved[1]
        query.fields["alert"].args["id"].description = saved[2]
        position.fields["epoch"].description = saved[3]
        role.values["ADMIN"].description = saved[4]
