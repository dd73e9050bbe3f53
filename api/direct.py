"""One-field operations of cached documents, executed without graphql-core's executor.

Why: after parsing and validation were cached, graphql-core's generic executor was
the largest part of a publish left: ~67 µs of CPU per operation on the 2026-12-02
machine around a resolver of ~1 µs (``bench/execute_cost.py``), most of it the
machinery for what a publish never has (incremental delivery, abort signals,
several root fields, fragments, lists, abstract types). The common request of a
service or a frontend has one root field whose result is an object of scalars:
``publishAnnouncement(input: …) { id title … __typename }``. For exactly that shape
this does what graphql-core does, with graphql-core's and Strawberry's own pieces:

- variables are coerced by graphql-core's ``coerce_input_value`` with signatures
  derived once per document when every one was given and is valid, else by its
  ``get_variable_values`` (defaults, and the same errors, word for word);
  arguments by its ``get_argument_values``;
- the root field's resolver is called as Strawberry's wrapper calls it (the
  ``Info`` it builds, argument conversion), with that wrapper's decisions made
  once per field by :mod:`api.resolver_plan`; a field with permissions or other
  field extensions keeps the wrapper itself;
- the result is completed as graphql-core's ``complete_value`` would: the
  ``is_type_of`` check, leaf serialization by the type's ``coerce_output_value``,
  null checks of non-null fields, errors located at their path, a non-null
  field's error nulling its parent.

Anything else (a second root field, fragments, directives, nested objects, lists,
abstract types, a field with a resolver of its own below the root, introspection)
gets no plan and goes through graphql-core as before. ``api/http_fast.py`` uses a
plan when there is one; ``tests/integration/test_http_fast.py`` requires status and
body equal to Strawberry's own path for every case it sends, success and error.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    is_leaf_type,
    located_error,
)
from graphql.execution.get_variable_signature import (
    GraphQLVariableSignature,
    get_variable_signature,
)
from graphql.execution.values import (
    VariableValues,
    VariableValueSource,
    get_argument_values,
    get_variable_values,
    input_is_nested_too_deeply,
)
from graphql.language.parser import MAX_NESTING_DEPTH
from graphql.pyutils import Path, Undefined, gather_with_cancel, inspect
from graphql.type.definition import GraphQLResolveInfoHelpers
from graphql.utilities.coerce_input_value import coerce_input_value
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.schema import _OperationContextAwareGraphQLResolveInfo

from api.resolver_plan import Resolve, resolver_for

Result = tuple[dict[str, Any] | None, list[GraphQLError]]
TYPENAME = "__typename"
MAX_COERCION_ERRORS = 50  # graphql-core's execute default


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One scalar or enum field of the root field's object (or ``__typename``)."""

    key: str  # the response key: the alias, else the field name
    name: str
    nodes: list[FieldNode]
    type: GraphQLLeafType | None  # None for __typename
    non_null: bool
    resolve: Callable[..., Any] | None  # Strawberry's basic-field getter


@dataclass(frozen=True, slots=True)
class DirectOperation:
    """How to execute one operation of one cached document (see the module doc)."""

    operation: OperationDefinitionNode
    parent: GraphQLObjectType  # Query or Mutation
    field: GraphQLField
    nodes: list[FieldNode]
    key: str
    object_type: GraphQLObjectType
    non_null: bool
    leaves: tuple[_Leaf, ...]
    # Derived once when planned: the same for every request of this document
    # (a Path is an immutable tuple, so one can be shared by all their infos).
    path: Path
    field_name: str
    has_args: bool
    resolve: Resolve  # the root field's resolver (api.resolver_plan)
    signatures: tuple[GraphQLVariableSignature, ...]  # of the operation's variables
    shallow: tuple[bool, ...]  # per variable: its type cannot nest too deeply

    async def execute(
        self,
        schema: GraphQLSchema,
        context: Any,
        variables: dict[str, Any],
        extensions: dict[str, Any] | None,
    ) -> Result:
        """(data, errors) as graphql-core's ``execute`` would give them."""
        coerced = self._variables(variables)
        if coerced is None:  # graphql-core's own walk: defaults, and every error
            checked = get_variable_values(
                schema,
                self.operation.variable_definitions or (),
                variables,
                max_errors=MAX_COERCION_ERRORS,
            )
            if isinstance(checked, list):
                return None, checked
            coerced = checked
        errors: list[GraphQLError] = []
        path = self.path
        info = _OperationContextAwareGraphQLResolveInfo(
            self.field_name,
            self.nodes,
            self.field.type,
            self.parent,
            path,
            schema,
            {},  # no fragments in a planned document
            None,  # root value, as http_fast passes it
            self.operation,
            coerced.coerced,
            context,
            optimized_is_awaitable,
            None,  # no abort signal, as http_fast runs graphql-core
            _HELPERS,
            extensions,  # type: ignore[arg-type]  # None when the request has none, as there
        )
        try:
            args = get_argument_values(self.field, self.nodes[0], coerced) if self.has_args else {}
            result = self.resolve(info, args)
            if optimized_is_awaitable(result):
                result = await result
            value = await self._complete(result, info, path, errors)
        except Exception as raw:
            errors.append(located_error(raw, self.nodes, path.as_list()))
            value = None
            if self.non_null:
                return None, errors
        return {self.key: value}, errors

    def _variables(self, given: dict[str, Any]) -> VariableValues | None:
        """The variables coerced as ``get_variable_values`` coerces them, when every
        one was given and is valid; None sends the request through that function.

        Why: it derives each variable's signature from the document per request
        (``get_variable_signature``, ~1.5% of a publish), which is the same for
        every request of a cached document. Anything but the plain case (a value
        left out, so a default may apply; a value it refuses; input nested too
        deeply) goes to graphql-core, so defaults and errors stay its own.
        """
        sources: dict[str, VariableValueSource] = {}
        coerced: dict[str, Any] = {}
        for signature, shallow in zip(self.signatures, self.shallow, strict=True):
            value = given.get(signature.name, Undefined)
            if value is Undefined:
                return None
            if not shallow and input_is_nested_too_deeply(value, signature.type):
                return None
            result = coerce_input_value(value, signature.type)
            if result is Undefined:
                return None
            sources[signature.name] = VariableValueSource(signature, value)
            coerced[signature.name] = result
        return VariableValues(sources, coerced)

    async def _complete(
        self, result: Any, info: Any, path: Path, errors: list[GraphQLError]
    ) -> dict[str, Any] | None:
        if _absent(result, self.non_null, self.parent, self.field_name):
            return None
        is_type_of = self.object_type.is_type_of
        if is_type_of is not None:
            matches: Any = is_type_of(result, info)
            if optimized_is_awaitable(matches):
                matches = await matches
            if not matches:
                raise GraphQLError(
                    f"Expected value of type '{self.object_type}' but got: {inspect(result)}.",
                    self.nodes,
                )
        completed: dict[str, Any] = {}
        for leaf in self.leaves:
            if leaf.type is None:
                completed[leaf.key] = self.object_type.name
                continue
            try:
                assert leaf.resolve is not None
                value = leaf.resolve(result, None)  # a basic field's getter ignores info
                if optimized_is_awaitable(value):  # an attribute holding an awaitable
                    value = await value
                completed[leaf.key] = self._leaf(leaf, value)
            except Exception as raw:
                leaf_path = Path(path, leaf.key, self.object_type.name)
                error = located_error(raw, leaf.nodes, leaf_path.as_list())
                if leaf.non_null:
                    raise error from None
                errors.append(error)
                completed[leaf.key] = None
        return completed

    def _leaf(self, leaf: _Leaf, value: Any) -> Any:
        """A leaf's value completed (not a coroutine: a publish has up to a dozen)."""
        assert leaf.type is not None
        if _absent(value, leaf.non_null, self.object_type, leaf.name):
            return None
        coerced = leaf.type.coerce_output_value(value)
        if coerced is Undefined or coerced is None:
            raise TypeError(
                f"Expected `{inspect(leaf.type)}.coerce_output_value({inspect(value)})` to"
                f" return non-nullable value, returned: {inspect(coerced)}"
            )
        return coerced


def _absent(value: Any, non_null: bool, parent: GraphQLObjectType, field: str) -> bool:
    """graphql-core's first steps in completing a value: an exception returned is
    raised, a null refused for a non-null field; True when the value is null."""
    if isinstance(value, Exception):
        raise value
    if value is None:
        if non_null:
            raise TypeError(f"Cannot return null for non-nullable field {parent}.{field}.")
        return True
    return False


def plan_operation(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode
) -> DirectOperation | None:
    """A plan for ``operation`` if it has the one shape this module executes."""
    if len(document.definitions) != 1 or operation.directives:
        return None
    parent = {
        OperationType.QUERY: schema.query_type,
        OperationType.MUTATION: schema.mutation_type,
    }.get(operation.operation)
    selections = operation.selection_set.selections
    if parent is None or len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    root = selections[0]
    field = parent.fields.get(root.name.value)
    if field is None or field.resolve is None or root.directives or root.selection_set is None:
        return None
    object_type = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if not isinstance(object_type, GraphQLObjectType):
        return None
    leaves = _leaves(object_type, root.selection_set.selections)
    if leaves is None:
        return None
    signatures: list[GraphQLVariableSignature] = []
    for node in operation.variable_definitions or ():
        signature = get_variable_signature(schema, node)
        if not isinstance(signature, GraphQLVariableSignature):
            return None  # validation refuses such documents; graphql-core says why
        signatures.append(signature)
    key = (root.alias or root.name).value
    return DirectOperation(
        operation=operation,
        parent=parent,
        field=field,
        nodes=[root],
        key=key,
        object_type=object_type,
        non_null=isinstance(field.type, GraphQLNonNull),
        leaves=leaves,
        path=Path(None, key, parent.name),
        field_name=root.name.value,
        has_args=bool(field.args or root.arguments),
        resolve=resolver_for(schema, field),
        signatures=tuple(signatures),
        shallow=tuple(_type_depth(s.type) <= MAX_NESTING_DEPTH for s in signatures),
    )


def _type_depth(type_: GraphQLInputType, seen: frozenset[str] = frozenset()) -> float:
    """How deep a value of ``type_`` can nest, counted as ``input_is_nested_too_deeply``
    counts it (one level per list and per input object); infinite if the type
    contains itself.

    Why: that walk follows the value only as far as the type goes, so for a type
    no deeper than its limit it can never say yes, and it was ~3% of a publish.
    """
    if isinstance(type_, GraphQLNonNull):
        return _type_depth(type_.of_type, seen)
    if isinstance(type_, GraphQLList):
        return 1 + _type_depth(type_.of_type, seen)
    if isinstance(type_, GraphQLInputObjectType):
        if type_.name in seen:
            return math.inf
        inner = seen | {type_.name}
        return 1 + max((_type_depth(f.type, inner) for f in type_.fields.values()), default=0)
    return 0


def _leaves(object_type: GraphQLObjectType, selections: Sequence[Any]) -> tuple[_Leaf, ...] | None:
    """The object's selection as leaves, or None if any part needs graphql-core."""
    leaves: list[_Leaf] = []
    keys: set[str] = set()
    for selection in selections:
        if not isinstance(selection, FieldNode) or selection.directives or selection.arguments:
            return None
        name = selection.name.value
        key = (selection.alias or selection.name).value
        if key in keys:  # graphql-core merges repeated keys; not worth doing here
            return None
        keys.add(key)
        if name == TYPENAME:
            leaves.append(_Leaf(key, name, [selection], None, True, None))
            continue
        field = object_type.fields.get(name)
        if field is None or name.startswith("__"):
            return None
        leaf_type = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        # Only Strawberry's basic fields (plain attributes, no resolver, no
        # extensions): their getter ignores the resolve info, so none is built.
        if not is_leaf_type(leaf_type) or not getattr(field.resolve, "_is_default", False):
            return None
        assert isinstance(leaf_type, GraphQLLeafType)  # narrowed by is_leaf_type
        non_null = isinstance(field.type, GraphQLNonNull)
        leaves.append(_Leaf(key, name, [selection], leaf_type, non_null, field.resolve))
    return tuple(leaves)


def _track(values: Sequence[Any]) -> None:
    """``info.async_helpers.track``: settle the awaitables in the background, their
    errors observed, the answer not waiting for them (graphql-core's
    ``settle_in_background``)."""
    awaitables = [v for v in values if optimized_is_awaitable(v)]
    if awaitables:
        future = asyncio.gather(*awaitables, return_exceptions=True)
        _BACKGROUND.add(future)  # a reference until done, or the loop may drop it
        future.add_done_callback(_BACKGROUND.discard)


def _gather(values: Sequence[Awaitable[Any]]) -> Awaitable[list[Any]]:
    """``info.async_helpers.gather``: all of them, or on a failure the rest cancelled
    and settled first (graphql-core's ``gather_async_work``)."""
    return gather_with_cancel(*values)


_BACKGROUND: set[asyncio.Future[Any]] = set()
# What graphql-core's executor gives resolvers: gather all or cancel all, and track.
_HELPERS = GraphQLResolveInfoHelpers(gather=_gather, track=_track)
