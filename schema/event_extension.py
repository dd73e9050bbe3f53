"""Emit an event for every mutation and every error a query or mutation returns.

Subscriptions emit their own start/stop events (``resolvers/channels.py``); doing
it here would fire once per delivered message.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import FieldNode, OperationDefinitionNode
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from resolvers.emit import emit
from schema.context import Context

NOT_EMITTED = frozenset({"trackActivity"})  # it emits the activity event itself


class EmitEvents(SchemaExtension):
    def on_execute(self) -> Iterator[None]:
        yield
        execution = self.execution_context
        context = execution.context
        if not isinstance(context, Context) or context.viewer is None:
            return
        if execution.operation_type is OperationType.SUBSCRIPTION:
            return
        errors = execution.result.errors if execution.result else None
        codes = sorted({str((e.extensions or {}).get("code", "INTERNAL")) for e in errors or []})
        if execution.operation_type is OperationType.MUTATION:
            outcome = "error" if errors else "ok"
            for name in self._fields(execution.graphql_document, execution.operation_name):
                if name not in NOT_EMITTED:
                    data = {"outcome": outcome, "codes": codes}
                    emit(context.services, context.viewer, f"mutation.{name}", data)
        for code in codes:
            data = {"operation": execution.operation_name or ""}
            emit(context.services, context.viewer, f"error.{code.lower()}", data)

    @staticmethod
    def _fields(document: object, operation_name: str | None) -> list[str]:
        definitions = getattr(document, "definitions", [])
        for node in definitions:
            if not isinstance(node, OperationDefinitionNode):
                continue
            if operation_name and (node.name is None or node.name.value != operation_name):
                continue
            return [s.name.value for s in node.selection_set.selections if isinstance(s, FieldNode)]
        return []
