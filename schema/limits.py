"""Document limits (depth, aliases, selections) checked in one pass linear in the
document: a validation rule that analyses each selection set once.

Why not Strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter``: both walk
every fragment spread anew, so a document whose fragments each spread the previous
one ten times costs 10^levels steps. A 638-byte anonymous request with seven
levels blocked the event loop for 20 s. Here every selection set, a fragment's
included, is analysed once and its cost remembered; a spread reads the remembered
cost, so counts after fragment expansion (which can be huge) are sums of numbers,
and computing them stays cheap.

What is counted, per operation unless said otherwise:

- **depth**: what ``QueryDepthLimiter`` counts, so the same documents pass: the
  longest chain of nested fields that have a selection set; an introspection field
  (``__schema``, ``__type``, ``__typename``) counts 0 and is not looked into.
  Refused when above the limit (``QUERY_TOO_DEEP``).
- **aliases**: aliased fields after fragment expansion, summed over the
  document's operations, as ``MaxAliasesLimiter`` counts them (``TOO_MANY_ALIASES``).
- **selections**: fields, inline fragments and fragment spreads after fragment
  expansion: the work anything that expands fragments does. This is the bound
  that defeats a fragment bomb, empty fragments included (``QUERY_TOO_COMPLEX``).

A spread of an unknown fragment, or one that closes a cycle, adds nothing here:
graphql-core's own rules (``KnownFragmentNames``, ``NoFragmentCycles``) refuse those
documents. Nothing recurses: fragment chains are not limited by the parser's
nesting limit, so the walk keeps its own stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionNode,
    SelectionSetNode,
)
from graphql.language import SKIP, VisitorAction
from graphql.validation import ASTValidationRule

__all__ = [
    "CAP",
    "QUERY_TOO_COMPLEX",
    "QUERY_TOO_DEEP",
    "TOO_MANY_ALIASES",
    "Analysis",
    "Cost",
    "analyse",
    "document_limits",
]

QUERY_TOO_DEEP = "QUERY_TOO_DEEP"
TOO_MANY_ALIASES = "TOO_MANY_ALIASES"
QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"

# Counts after expansion stop growing here: far above any limit, and it keeps every
# addition O(1) where a bomb's true count has hundreds of digits.
CAP = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Cost:
    """What a selection set costs once its fragments are expanded (counts capped at
    :data:`CAP`)."""

    depth: int = 0
    aliases: int = 0
    selections: int = 0


_FREE = Cost()


@dataclass(frozen=True, slots=True)
class Analysis:
    """The cost of each operation of a document, and how many selections the
    analysis looked at (each at most twice: once to find what it needs, once to
    add it up), the measure of its own cost."""

    operations: list[tuple[OperationDefinitionNode, Cost]]
    looked_at: int

    @property
    def aliases(self) -> int:
        """Aliases of the whole document, as ``MaxAliasesLimiter`` counts them."""
        return min(sum(cost.aliases for _, cost in self.operations), CAP)


def _nested(
    selection: SelectionNode, fragments: dict[str, SelectionSetNode]
) -> SelectionSetNode | None:
    """The selection set ``selection`` brings in: its own, or its fragment's."""
    if isinstance(selection, FragmentSpreadNode):
        return fragments.get(selection.name.value)
    if isinstance(selection, FieldNode | InlineFragmentNode):
        return selection.selection_set
    return None


def analyse(document: DocumentNode) -> Analysis:
    """The cost of every operation of ``document``, each selection set analysed once."""
    fragments = {
        d.name.value: d.selection_set
        for d in document.definitions
        if isinstance(d, FragmentDefinitionNode)
    }
    done: dict[int, Cost] = {}  # by id(): nodes hash by value, which walks them
    looked_at = 0

    def add_up(node: SelectionSetNode) -> Cost:
        depth = aliases = selections = 0
        for selection in node.selections:
            selections += 1
            nested = _nested(selection, fragments)
            # Unknown fragment, or a spread closing a cycle (its set is unfinished).
            inner = _FREE if nested is None else done.get(id(nested), _FREE)
            aliases += inner.aliases
            selections += inner.selections
            if isinstance(selection, FieldNode):
                if selection.alias is not None:
                    aliases += 1
                if nested is not None and not selection.name.value.startswith("__"):
                    depth = max(depth, 1 + inner.depth)
            else:
                depth = max(depth, inner.depth)
        return Cost(depth, min(aliases, CAP), min(selections, CAP))

    def cost_of(root: SelectionSetNode) -> Cost:
        """Post-order without recursion. Every set on ``stack`` that is in
        ``started`` is an ancestor of the top one, so meeting one again closes a
        cycle, and it is not entered again."""
        nonlocal looked_at
        started: set[int] = set()
        stack = [root]
        while stack:
            node = stack[-1]
            key = id(node)
            if key in done:
                stack.pop()
            elif key in started:
                done[key] = add_up(node)
                looked_at += len(node.selections)
                stack.pop()
            else:
                started.add(key)
                looked_at += len(node.selections)
                for selection in node.selections:
                    nested = _nested(selection, fragments)
                    if nested is None or id(nested) in done or id(nested) in started:
                        continue
                    stack.append(nested)
        return done[id(root)]

    operations = [
        (d, cost_of(d.selection_set))
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    ]
    return Analysis(operations, looked_at)


def _shown(count: int) -> str:
    return str(count) if count < CAP else f"more than {CAP - 1}"


def document_limits(
    *, max_depth: int, max_aliases: int, max_selections: int
) -> type[ASTValidationRule]:
    """A validation rule refusing documents above these limits, each refusal a
    ``GraphQLError`` with ``extensions.code``. Build it once per schema: the
    validation cache keys on the rule classes."""

    class DocumentLimits(ASTValidationRule):
        limits: ClassVar[tuple[int, int, int]] = (max_depth, max_aliases, max_selections)

        def enter_document(self, node: DocumentNode, *_args: Any) -> VisitorAction:
            for error in _errors(analyse(node), max_depth, max_aliases, max_selections):
                self.report_error(error)
            return SKIP  # all done: no need to visit the rest of the document

    return DocumentLimits


def _errors(
    analysis: Analysis, max_depth: int, max_aliases: int, max_selections: int
) -> Iterator[GraphQLError]:
    for operation, cost in analysis.operations:
        name = operation.name.value if operation.name else "anonymous"
        if cost.depth > max_depth:
            # Strawberry's message, so clients matching on it see no change.
            yield GraphQLError(
                f"'{name}' exceeds maximum operation depth of {max_depth}",
                operation,
                extensions={"code": QUERY_TOO_DEEP},
            )
        if cost.selections > max_selections:
            yield GraphQLError(
                f"'{name}' has {_shown(cost.selections)} selections once its fragments "
                f"are expanded. Allowed: {max_selections}",
                operation,
                extensions={"code": QUERY_TOO_COMPLEX},
            )
    if analysis.aliases > max_aliases:
        yield GraphQLError(
            f"{_shown(analysis.aliases)} aliases found. Allowed: {max_aliases}",
            extensions={"code": TOO_MANY_ALIASES},
        )
