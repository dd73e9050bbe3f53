"""Decide whether a subscribe message can take the multiplexed path, and how to key it;
also which HTTP operations may skip Strawberry's view (``api.http_fast``).

A plan is made only for a valid document (same parser token limit, depth and alias
limits as the schema's extensions) whose operation is a subscription with exactly
one root field, ``channel``, and no directives on it, naming its channel with exactly
one of the arguments ``channel`` and ``name`` (deprecated), whose selection reads no
field resolved by a coroutine (:mod:`schema.awaiting`: the group executes
synchronously). Anything else returns None and Strawberry handles it, errors
included, exactly as before.

A plan is per viewer when its selection reads a field the schema declares
viewer-dependent (:mod:`schema.viewer`), found with type information, so through
fragments and on nested types too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    Node,
    OperationDefinitionNode,
    OperationType,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
    visit,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.language import VariableNode
from graphql.validation import ASTValidationRule

from schema.awaiting import is_awaiting
from schema.context import Context
from schema.viewer import is_viewer_dependent

if TYPE_CHECKING:  # the ``direct`` fast path, imported only when api/accel turns it on
    from api.direct import DirectOperation

PlanDirect = Callable[
    [GraphQLSchema, DocumentNode, OperationDefinitionNode], "DirectOperation | None"
]

_VARIABLES_KEY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
# Plans are cached only for variables up to this size (a channel name and a
# position are ~100 bytes): the cache outlives subscribers, and a client must not
# be able to park megabytes in it with large unused variables.
CACHED_VARIABLES_MAX_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Plan:
    name: str  # the channel as requested; the handler authorizes it
    since: dict[str, Any] | None
    document: DocumentNode
    query: str
    operation_name: str | None
    variables: dict[str, Any]
    variables_key: str  # only the variables the selection itself reads
    per_viewer: bool
    channel: str = ""  # canonical name, set once authorized

    def group_key(self, context: Context) -> tuple[Any, ...]:
        viewer = context.viewer.user_id if self.per_viewer and context.viewer else None
        return (self.channel, self.query, self.operation_name, self.variables_key, viewer)


@dataclass(frozen=True, slots=True)
class Request:
    query: str
    document: DocumentNode
    operation: OperationDefinitionNode
    operation_name: str | None
    variables: dict[str, Any]
    extensions: dict[str, Any] | None
    direct: DirectOperation | None = None  # api.direct's plan, when it has one


_Prepared = tuple[str, DocumentNode, OperationDefinitionNode, "DirectOperation | None"]


def viewer_dependent_fields(schema: GraphQLSchema) -> frozenset[tuple[str, str]]:
    """(parent type, field) of every field whose value depends on the viewer.

    An interface's field counts when any implementation declares it: a selection
    through the interface may reach that implementation.
    """
    return _fields_where(schema, is_viewer_dependent)


def awaiting_fields(schema: GraphQLSchema) -> frozenset[tuple[str, str]]:
    """(parent type, field) of every field resolved by a coroutine, interfaces'
    fields included as in :func:`viewer_dependent_fields`."""
    return _fields_where(schema, is_awaiting)


def _fields_where(
    schema: GraphQLSchema, predicate: Callable[[GraphQLField], bool]
) -> frozenset[tuple[str, str]]:
    declared = {
        (named.name, name)
        for named in schema.type_map.values()
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType)
        for name, field in named.fields.items()
        if predicate(field)
    }
    for named in schema.type_map.values():
        if isinstance(named, GraphQLInterfaceType):
            declared.update(
                (named.name, name)
                for implementation in schema.get_possible_types(named)
                for name in named.fields
                if (implementation.name, name) in declared
            )
    return frozenset(declared)


class _Collect(Visitor):
    """The variables a selection reads, whether it reads a viewer-dependent field or
    one resolved by a coroutine, and the fragments it spreads; run inside a
    :class:`TypeInfoVisitor`, which knows each field's parent type."""

    def __init__(
        self,
        type_info: TypeInfo,
        viewer_fields: frozenset[tuple[str, str]],
        awaiting: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        super().__init__()
        self.type_info = type_info
        self.viewer_fields = viewer_fields
        self.awaiting = awaiting
        self.variables: set[str] = set()
        self.spreads: set[str] = set()
        self.per_viewer = False
        self.awaits = False

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.variables.add(node.name.value)

    def enter_fragment_spread(self, node: FragmentSpreadNode, *_: Any) -> None:
        self.spreads.add(node.name.value)

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        parent = self.type_info.get_parent_type()
        if parent is None:
            return
        coordinate = (parent.name, node.name.value)
        if coordinate in self.viewer_fields:
            self.per_viewer = True
        if coordinate in self.awaiting:
            self.awaits = True


def _read_selection(
    schema: GraphQLSchema,
    field: FieldNode,
    field_type: GraphQLOutputType,
    document: DocumentNode,
    viewer_fields: frozenset[tuple[str, str]],
    awaiting: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[set[str], bool, bool]:
    """The variables ``field``'s selection reads (not its arguments), whether it
    reads a viewer-dependent field and whether it reads one resolved by a coroutine,
    following its fragment spreads, nested ones too."""
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    variables: set[str] = set()
    per_viewer = awaits = False
    pending: list[tuple[Node, TypeInfo]] = []
    if field.selection_set is not None:
        pending.append((field.selection_set, TypeInfo(schema, field_type)))
    seen: set[str] = set()
    while pending:
        node, type_info = pending.pop()
        inner = _Collect(type_info, viewer_fields, awaiting)
        visit(node, TypeInfoVisitor(type_info, inner))
        variables |= inner.variables
        per_viewer = per_viewer or inner.per_viewer
        awaits = awaits or inner.awaits
        for name in inner.spreads - seen:  # validated: every spread names a fragment
            seen.add(name)
            pending.append((fragments[name], TypeInfo(schema)))
    return variables, per_viewer, awaits


class Planner:
    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        max_tokens: int,
        limit_rules: Sequence[type[ASTValidationRule]],
        plan_direct: PlanDirect | None = None,
    ) -> None:
        """``limit_rules``: the schema's own (``schema.build.limit_rules``), so both
        paths refuse exactly the same documents. ``plan_direct``:
        ``api.direct.plan_operation`` when the ``direct`` fast path is on."""
        self._schema = schema
        self._plan_direct = plan_direct
        self._rules = [*specified_rules, *limit_rules]
        self._max_tokens = max_tokens
        self._checked = lru_cache(maxsize=1024)(self._parse_and_validate)
        self._prepared = lru_cache(maxsize=1024)(self._prepare)
        self._shaped = lru_cache(maxsize=1024)(self._shape)
        self._planned = lru_cache(maxsize=4096)(self._plan)
        self._kinds = lru_cache(maxsize=1024)(self._kind)

    def _parse_and_validate(self, query: str) -> tuple[str, DocumentNode] | None:
        """The document, and the query text it was made from: that one string then
        stands for every equal copy clients send (group keys hold it for as long as
        a subscription lives)."""
        try:
            document = parse(query, max_tokens=self._max_tokens)
        except GraphQLError:
            return None
        return None if validate(self._schema, document, self._rules) else (query, document)

    def _prepare(self, query: str, operation_name: str | None) -> _Prepared | None:
        """Once per document and operation name: the checked document, the operation
        it names and ``api.direct``'s plan for it (None for most shapes and for every
        subscription). One cache lookup per request instead of three."""
        checked = self._checked(query)
        if checked is None:
            return None
        query, document = checked
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return None
        plan_direct = self._plan_direct
        direct = None if plan_direct is None else plan_direct(self._schema, document, operation)
        return query, document, operation, direct

    def _request(self, payload: object) -> Request | None:
        """The valid document a GraphQL request payload names, with its operation
        and ``api.direct``'s plan if it has one."""
        if not isinstance(payload, dict):
            return None
        query, operation_name = payload.get("query"), payload.get("operationName")
        raw_variables = payload.get("variables")
        if raw_variables is None:  # only missing or null means none: Strawberry
            raw_variables = {}  # refuses 0, false, "" and [] as it does [1]
        if not isinstance(query, str) or not isinstance(raw_variables, dict):
            return None
        if operation_name is not None and not isinstance(operation_name, str):
            return None
        extensions = payload.get("extensions")
        if extensions is not None and not isinstance(extensions, dict):
            return None
        prepared = self._prepared(query, operation_name)
        if prepared is None:
            return None
        query, document, operation, direct = prepared
        return Request(
            query, document, operation, operation_name, raw_variables, extensions, direct
        )

    def _kind(self, query: str, operation_name: str | None) -> OperationType | None:
        try:
            document = parse(query, max_tokens=self._max_tokens)
        except GraphQLError:
            return None
        operation = get_operation_ast(document, operation_name)
        return None if operation is None else operation.operation

    def operation_type(self, query: object, operation_name: object) -> OperationType | None:
        """What a document's operation is, valid or not (within the token limit);
        None if it does not parse or names no operation."""
        if not isinstance(query, str):
            return None
        if operation_name is not None and not isinstance(operation_name, str):
            return None
        return self._kinds(query, operation_name)

    def request(self, payload: object) -> Request | None:
        """The valid operation (of any type) a GraphQL request payload names; None
        if it does not parse, validate or name one (within the token limit)."""
        return self._request(payload)

    def operation(self, payload: object) -> Request | None:
        """A query or mutation that may skip Strawberry's HTTP view (``api.http_fast``)."""
        request = self._request(payload)
        if request is None or request.operation.operation is OperationType.SUBSCRIPTION:
            return None
        return request

    def plan(self, payload: object) -> Plan | None:
        """The plan of a subscribe payload; equal payloads share one plan.

        Why cached: coercing the variables against the operation was ~5% of the
        server's CPU per handshake, and a thousand subscribers of one channel send
        the same document with the same variables. The key is the variables' JSON
        text (sorted keys), so any difference in value makes a new plan.
        """
        request = self._request(payload)
        if request is None or request.operation.operation is not OperationType.SUBSCRIPTION:
            return None
        try:
            variables_text = _VARIABLES_KEY.encode(request.variables)
        except (TypeError, ValueError):  # not JSON (only possible from Python callers)
            return None
        if len(variables_text) > CACHED_VARIABLES_MAX_CHARS:
            return self._plan(request.query, request.operation_name, variables_text)
        return self._planned(request.query, request.operation_name, variables_text)

    def _plan(self, query: str, operation_name: str | None, variables_text: str) -> Plan | None:
        checked = self._checked(query)
        shape = self._shaped(query, operation_name)
        if checked is None or shape is None:
            return None
        document = checked[1]
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return None
        root, used_names, per_viewer = shape
        variables = json.loads(variables_text)  # the plan's own copy
        coerced = get_variable_values(self._schema, operation.variable_definitions or (), variables)
        if isinstance(coerced, list):
            return None
        subscription = self._schema.subscription_type
        assert subscription is not None
        args = get_argument_values(subscription.fields["channel"], root, coerced)
        # ``channel``, or the deprecated ``name``: both or neither is the stock path's
        # BAD_INPUT to report (resolvers.channels.requested).
        channel, name = args.get("channel"), args.get("name")
        requested = name if channel is None else channel if name is None else None
        if requested is None:
            return None
        used = {k: coerced.coerced.get(k) for k in used_names}
        return Plan(
            name=requested,
            since=args.get("since"),
            document=document,
            query=query,
            operation_name=operation_name,
            variables=variables,
            variables_key=json.dumps(used, sort_keys=True, default=str),
            per_viewer=per_viewer,
        )

    def _shape(
        self, query: str, operation_name: str | None
    ) -> tuple[FieldNode, tuple[str, ...], bool] | None:
        """What a subscription document means for grouping, once per document:
        its ``channel`` root field, the variables its selection reads, and whether
        it reads a viewer-dependent field (a tree walk that was per subscribe)."""
        checked = self._checked(query)
        if checked is None:
            return None
        document = checked[1]
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return None
        selections = operation.selection_set.selections
        root = selections[0] if len(selections) == 1 else None
        if not isinstance(root, FieldNode) or root.name.value != "channel" or root.directives:
            return None
        subscription = self._schema.subscription_type
        assert subscription is not None  # the document validated as a subscription
        field_type = subscription.fields["channel"].type
        variables, per_viewer, awaits = _read_selection(
            self._schema, root, field_type, document, self._viewer_fields, self._awaiting
        )
        if awaits:  # a group executes synchronously: Strawberry's path awaits these
            return None
        return root, tuple(sorted(variables)), per_viewer

    @cached_property
    def _viewer_fields(self) -> frozenset[tuple[str, str]]:
        """Computed on the first subscription planned, from the schema this plans for."""
        return viewer_dependent_fields(self._schema)

    @cached_property
    def _awaiting(self) -> frozenset[tuple[str, str]]:
        return awaiting_fields(self._schema)
