"""Emit an event for every mutation and every error a query or mutation returns.

Subscriptions emit their own start/stop events (``resolvers/channels.py``); doing
it here would fire once per delivered message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from resolvers.emit import emit
from schema.context import Context
from schema.errors import should_mask

NOT_EMITTED = frozenset({"trackActivity"})  # it emits the activity event itself


class EmitEvents(SchemaExtension):
    def on_execute(self) -> Iterator[None]:
        yield
        execution = self.execution_context
        result = execution.result
        emit_operation_events(
            execution.context,
            execution.operation_type,
            execution.graphql_document,
            execution.operation_name,
            getattr(result, "errors", None),
        )


def emit_operation_events(
    context: object,
    operation_type: OperationType,
    document: object,
    operation_name: str | None,
    errors: Sequence[GraphQLError] | None,
) -> None:
    """The events of one executed query or mutation, from its errors before masking.

    Shared by the extension (Strawberry's path) and ``api.http_fast``.
    """
    if not isinstance(context, Context) or context.viewer is None:
        return
    if operation_type is OperationType.SUBSCRIPTION:
        return
    codes = sorted({error_code(e) for e in errors or []})
    if operation_type is OperationType.MUTATION:
        outcome = "error" if errors else "ok"
        for name in _fields(document, operation_name):
            if name not in NOT_EMITTED:
                data = {"outcome": outcome, "codes": codes}
                emit(context.services, context.viewer, f"mutation.{name}", data)
    for code in codes:
        data = {"operation": operation_name or ""}
        emit(context.services, context.viewer, f"error.{code.lower()}", data)


def error_code(error: GraphQLError) -> str:
    """What an error is counted as: its own code; ``BAD_INPUT`` for GraphQL's own
    check of the request (a variable of the wrong type, an unknown enum value: no
    path, and nothing a client may not see, see ``should_mask``); else ``INTERNAL``.

    Why not INTERNAL for all of them: ``error.internal`` feeds the errors/min
    metric and its alert, which a client sending bad variables must not trip.
    """
    code = (error.extensions or {}).get("code")
    if code is not None:
        return str(code)
    if error.path is None and not should_mask(error):
        return "BAD_INPUT"
    return "INTERNAL"


def _fields(document: object, operation_name: str | None) -> list[str]:
    definitions = getattr(document, "definitions", [])
    for node in definitions:
        if not isinstance(node, OperationDefinitionNode):
            continue
        if operation_name and (node.name is None or node.name.value != operation_name):
            continue
        return [s.name.value for s in node.selection_set.selections if isinstance(s, FieldNode)]
    return []
