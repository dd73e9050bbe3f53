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
from schema.errors import ApiError, should_mask

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
    kinds = {(error_code(e), is_client_fault(e)) for e in errors or []}
    codes = sorted({code for code, _ in kinds})
    if operation_type is OperationType.MUTATION:
        outcome = "error" if errors else "ok"
        for name in _fields(document, operation_name):
            if name not in NOT_EMITTED:
                data = {"outcome": outcome, "codes": codes}
                emit(context.services, context.viewer, f"mutation.{name}", data)
    for code, client in sorted(kinds):
        data = {"operation": operation_name or ""}
        prefix = "client_error" if client else "error"
        emit(context.services, context.viewer, f"{prefix}.{code.lower()}", data)


def error_code(error: GraphQLError) -> str:
    """What an error is counted as: its own code; ``BAD_INPUT`` for GraphQL's own
    check of the request (a variable of the wrong type, an unknown enum value: no
    path, and nothing a client may not see, see ``should_mask``); else ``INTERNAL``.

    Why not INTERNAL for all of them: a client sending bad variables must be told
    apart from a server fault (see :func:`is_client_fault`).
    """
    code = (error.extensions or {}).get("code")
    if code is not None:
        return str(code)
    if error.path is None and not should_mask(error):
        return "BAD_INPUT"
    return "INTERNAL"


def is_client_fault(error: GraphQLError) -> bool:
    """Whether the request itself was at fault: our errors say so on their class
    (``ApiError.client_fault``); GraphQL's own checks of the request (validation,
    variables, document limits) are the client's; an unexpected exception is ours.

    Why it matters: ``error.*`` events feed errors/min and its alert. One student's
    60 FORBIDDEN answers tripped the institution's alert before this split; they
    are ``client_error.*`` events now, still counted per type.
    """
    original = error.original_error
    if isinstance(original, ApiError):
        return original.client_fault
    return not should_mask(error)


def _fields(document: object, operation_name: str | None) -> list[str]:
    definitions = getattr(document, "definitions", [])
    for node in definitions:
        if not isinstance(node, OperationDefinitionNode):
            continue
        if operation_name and (node.name is None or node.name.value != operation_name):
            continue
        return [s.name.value for s in node.selection_set.selections if isinstance(s, FieldNode)]
    return []
