"""Root resolvers called as Strawberry's wrapper calls them, with its decisions made once.

Why: after ``api/direct.py`` took graphql-core's executor out of a publish, the
largest generic part left around the resolver was Strawberry's resolve wrapper
(``GraphQLCoreConverter.from_resolver``): per request it builds a chain of field
extensions with ``functools.reduce``, walks every argument through
``convert_arguments`` (a name conversion and a chain of ``isinstance`` checks per
argument) and inspects the resolver's reserved parameters, ~6% of a publish for
what is the same every time for one field. This does the same steps in the same
order, decided once per field:

- the ``Info`` is the schema's ``info_class`` built from graphql-core's resolve
  info, as Strawberry builds it;
- an argument graphql-core gave a value for is converted as ``convert_argument``
  would: a scalar or enum (not ``GlobalID``) passed through, an input object with
  a ``from_input`` hook (``schema/inputs.py`` gives every plain input type one)
  built by that hook with the same ``InputContext``, anything else by Strawberry's
  own ``convert_argument``; arguments without a value are left out, so the
  resolver's own defaults apply;
- ``self`` as the first positional argument and ``root``/``parent``/``info`` as
  keywords, from the resolver's reserved parameters, and the call itself through
  ``StrawberryField.get_result``.

A field gets no plan, and keeps Strawberry's wrapper, when anything else could run
around its resolver: field extensions (permission classes are one), exception
handlers in the schema's config, or a resolve function that is not Strawberry's
own wrapper. ``tests/unit/test_direct.py`` runs its documents with and without
the plan and requires equal answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLField, GraphQLSchema
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.arguments import InputContext, StrawberryArgument, convert_argument
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.field import StrawberryField
from strawberry.types.info import Info
from strawberry.types.unset import UNSET

from schema.inputs import is_leaf

# The resolve info is Strawberry's operation-aware variant of graphql-core's.
Resolve = Callable[[Any, dict[str, Any]], Any]
Convert = Callable[[Any, Info[Any, Any]], Any]
# The closures Strawberry's schema converter makes the resolve function of a field
# with a resolver; a resolve function of any other origin is called as it is.
STRAWBERRY_WRAPPERS = (
    "GraphQLCoreConverter.from_resolver.<locals>._async_resolver",
    "GraphQLCoreConverter.from_resolver.<locals>._resolver",
)


@dataclass(frozen=True, slots=True)
class _Argument:
    graphql_name: str
    python_name: str
    convert: Convert | None  # None: passed through as graphql-core coerced it


@dataclass(frozen=True, slots=True)
class PlannedResolver:
    """Calls one root field's resolver; ``None`` is the source, as at the root."""

    field: StrawberryField
    info_class: type[Info[Any, Any]]
    arguments: tuple[_Argument, ...]
    positional: tuple[None, ...]  # (None,) when the resolver takes ``self``
    source_names: tuple[str, ...]  # its ``root`` / ``parent`` parameters
    info_name: str | None

    def __call__(self, info: Any, args: dict[str, Any]) -> Any:
        strawberry_info = self.info_class(_raw_info=info, _field=self.field)
        kwargs: dict[str, Any] = {}
        for argument in self.arguments:
            if argument.graphql_name in args:
                value = args[argument.graphql_name]
                convert = argument.convert
                kwargs[argument.python_name] = (
                    value if convert is None else convert(value, strawberry_info)
                )
        for name in self.source_names:
            kwargs[name] = None
        if self.info_name is not None:
            kwargs[self.info_name] = strawberry_info
        return self.field.get_result(
            None, info=strawberry_info, args=list(self.positional), kwargs=kwargs
        )


def resolver_for(schema: GraphQLSchema, field: GraphQLField) -> Resolve:
    """How to call ``field``'s resolver at the root: planned if it can be, else
    through its resolve function."""
    planned = plan_resolver(schema, field)
    if planned is not None:
        return planned
    resolve = field.resolve
    if resolve is None:
        raise ValueError("a root field without a resolve function")
    return lambda info, args: resolve(None, info, **args)


def plan_resolver(schema: GraphQLSchema, field: GraphQLField) -> PlannedResolver | None:
    """The plan for ``field``, or None when something besides Strawberry's plain
    wrapper could run around its resolver (see the module doc)."""
    strawberry_schema = getattr(schema, "_strawberry_schema", None)
    definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    resolve_name = getattr(field.resolve, "__qualname__", "")
    if (
        strawberry_schema is None
        or not isinstance(definition, StrawberryField)
        or definition.base_resolver is None
        or definition.extensions
        or resolve_name not in STRAWBERRY_WRAPPERS
    ):
        return None
    converter: GraphQLCoreConverter = strawberry_schema.schema_converter
    if converter._exception_handler_specs:
        return None
    config = strawberry_schema.config
    registry = converter.scalar_registry
    arguments = tuple(
        _Argument(
            name := config.name_converter.from_argument(argument),
            argument.python_name,
            _converter(argument, name, config, registry),
        )
        for argument in definition.arguments
    )
    resolver = definition.base_resolver
    sources = (resolver.root_parameter, resolver.parent_parameter)
    return PlannedResolver(
        field=definition,
        info_class=config.info_class,
        arguments=arguments,
        positional=(None,) if resolver.self_parameter is not None else (),
        source_names=tuple(dict.fromkeys(p.name for p in sources if p is not None)),
        info_name=resolver.info_parameter.name if resolver.info_parameter else None,
    )


def _converter(
    argument: StrawberryArgument, name: str, config: Any, registry: Any
) -> Convert | None:
    """``convert_argument`` for this argument's type, with its branches taken once."""
    type_: Any = argument.type
    if is_leaf(type_, registry):
        return None
    definition = getattr(type_, "__strawberry_definition__", None)
    if isinstance(definition, StrawberryObjectDefinition) and definition.from_input is not None:
        from_input = definition.from_input

        def build(value: Any, info: Info[Any, Any]) -> Any:
            if value is None or value is UNSET:  # convert_argument's checks before it
                return value
            context = InputContext(info=info, config=config, scalar_registry=registry, path=(name,))
            return from_input(type_, value, context)

        return build

    def generic(value: Any, info: Info[Any, Any]) -> Any:
        return convert_argument(value, type_, registry, config, info, path=(name,))

    return generic
