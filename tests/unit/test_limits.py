"""schema/limits.py: the same depth and alias verdicts as Strawberry's limiters on
ordinary documents, and a cost linear in the document on fragment bombs."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_introspection_query,
    parse,
    specified_rules,
    validate,
)
from graphql.validation import ASTValidationRule
from hypothesis import given, settings
from hypothesis import strategies as st
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.extensions.max_aliases import count_fields_with_alias

from api.settings import Settings
from schema.build import build_schema, limit_rules
from schema.limits import (
    CAP,
    QUERY_TOO_COMPLEX,
    QUERY_TOO_DEEP,
    TOO_MANY_ALIASES,
    analyse,
    document_limits,
)


@cache
def schema() -> GraphQLSchema:
    return build_schema(Settings())._schema


def rule(depth: int = 10, aliases: int = 15, selections: int = 2000) -> type[ASTValidationRule]:
    return document_limits(max_depth=depth, max_aliases=aliases, max_selections=selections)


def codes(errors: list[GraphQLError]) -> list[str]:
    return [str((e.extensions or {}).get("code")) for e in errors]


def check(query: str, rules: list[type[ASTValidationRule]]) -> list[GraphQLError]:
    return validate(schema(), parse(query), rules)


def bomb(levels: int = 7, fan: int = 10, *, leaf: str = "id", spread: str = "...F{}") -> str:
    """The attacker's document: each fragment spreads the previous one ``fan`` times."""
    parts = [f"fragment F0 on Me {{ {leaf} }}"]
    for level in range(1, levels + 1):
        body = " ".join(spread.format(level - 1) for _ in range(fan))
        parts.append(f"fragment F{level} on Me {{ {body} }}")
    parts.append(f"query {{ me {{ ...F{levels} }} }}")
    return "\n".join(parts)


# Documents as clients send them: the repo's own, GraphiQL's introspection, and
# shapes that exercise each rule of the depth and alias counts.
ORDINARY = [
    "{ me { id } }",
    "{ __typename }",
    "{ me { id role displayName institutionId classroomIds } "
    "institutions { id departments { id } classrooms { id channel } } }",
    "query($id: ID!) { alert(id: $id) { id state rollCall { targeted acknowledged "
    "missing { userId displayName } } } }",
    "query A { me { id } } query B { me { id role institution { id name } } }",
    "query { ...F me { ...M } } fragment F on Query { __typename } fragment M on Me { id }",
    "{ institutions { departments { id } __typename __typename __typename } }",
    "{ a: me { id } b: me { x: id y: id } c: institutions { d: id } }",
    "query Q { a: me { ...M ...M } } fragment M on Me { x: id y: id }",
    "{ me { ... on Me { a: id ... on Me { b: id institution { c: id } } } } }",
    "{ a { b { c { d { e { f { g { h { i { j { k } } } } } } } } } } }",
    "{ a { b { c { d { e { f { g { h { i { j } } } } } } } } } }",
    "{ a { b { c { d { e { f { g { h { i { __typename } } } } } } } } } }",
    "{ a { b { c { d { e { f { g { h { i { __schema { types { fields { name } } } }" + " }" * 9,
    "{ __schema { types { fields { type { ofType { ofType { ofType { name } } } } } } } }",
    "{ a { ...A } } fragment A on T { b { ...B } } fragment B on T { c { ...C x: d } } "
    "fragment C on T { e { f { y: g } } }",
    "query One { a { ...A } } query Two { b { ... on T { ...A } } } "
    "fragment A on T { a1: x { a2: y { z } } }",
    "mutation { a: publishAnnouncement(input: {}) { id } b: publishAnnouncement(input: {}) "
    "{ id } }",
    get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    ),
]


def strawberry_depths(document: DocumentNode) -> dict[str, int]:
    depths: dict[str, int] = {}
    limiter = QueryDepthLimiter(max_depth=1000, callback=depths.update)
    validate(schema(), document, limiter.validation_rules)
    return depths


def strawberry_aliases(document: DocumentNode) -> int:
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    return sum(
        count_fields_with_alias(d, fragments)
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    )


def our_depths(document: DocumentNode) -> dict[str, int]:
    return {
        (op.name.value if op.name else "anonymous"): cost.depth
        for op, cost in analyse(document).operations
    }


@pytest.mark.parametrize("query", ORDINARY)
def test_counts_equal_strawberrys(query: str) -> None:
    document = parse(query)
    assert our_depths(document) == strawberry_depths(document)
    assert analyse(document).aliases == strawberry_aliases(document)


@pytest.mark.parametrize("query", ORDINARY)
def test_same_verdicts_at_the_limits(query: str) -> None:
    for depth in range(2, 13):
        theirs = check(query, QueryDepthLimiter(max_depth=depth).validation_rules)
        ours = check(query, [rule(depth=depth)])
        assert bool(theirs) == (QUERY_TOO_DEEP in codes(ours)), depth
    for aliases in range(1, 8):
        theirs = check(query, MaxAliasesLimiter(max_alias_count=aliases).validation_rules)
        ours = check(query, [rule(aliases=aliases)])
        assert bool(theirs) == (TOO_MANY_ALIASES in codes(ours)), aliases
    assert check(query, limit_rules(Settings())) == []  # every one passes the defaults


def test_refusals_say_why_with_a_code() -> None:
    deep = "query Deep { a { b { c { d } } } }"
    [error] = check(deep, [rule(depth=2)])
    assert error.message == "'Deep' exceeds maximum operation depth of 2"
    assert error.extensions == {"code": QUERY_TOO_DEEP}
    [error] = check("{ a: me { b: id c: id } }", [rule(aliases=2)])
    assert error.message == "3 aliases found. Allowed: 2"
    assert error.extensions == {"code": TOO_MANY_ALIASES}
    [error] = check("{ me { id role } }", [rule(selections=2)])
    assert error.message == "'anonymous' has 3 selections once its fragments are expanded. " + (
        "Allowed: 2"
    )
    assert error.extensions == {"code": QUERY_TOO_COMPLEX}


def naive_selections(document: DocumentNode) -> int:
    """Selections after expansion, by expanding (small documents only)."""
    fragments = {
        d.name.value: d.selection_set
        for d in document.definitions
        if isinstance(d, FragmentDefinitionNode)
    }

    def count(node: SelectionSetNode) -> int:
        total = 0
        for selection in node.selections:
            total += 1
            if isinstance(selection, FragmentSpreadNode):
                total += count(fragments[selection.name.value])
            elif isinstance(selection, FieldNode | InlineFragmentNode):
                if selection.selection_set is not None:
                    total += count(selection.selection_set)
        return total

    return sum(
        count(d.selection_set)
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    )


@pytest.mark.parametrize("query", ORDINARY)
def test_selections_count_every_expanded_selection(query: str) -> None:
    document = parse(query)
    assert sum(c.selections for _, c in analyse(document).operations) == naive_selections(document)


# --- fragment bombs ---------------------------------------------------------------


def timed_codes(query: str, rules: list[type[ASTValidationRule]]) -> list[str]:
    """Validation codes of ``query``; generous wall-clock bound (the bug took 20 s)."""
    started = time.perf_counter()
    errors = check(query, rules)
    assert time.perf_counter() - started < 2.0
    return codes(errors)


BOMBS = {
    "spreads": bomb(),
    "aliases": bomb(leaf="a: id b: id", spread="a: me {{ ...F{0} }}"),
    "inline fragments": bomb(spread="... on Me {{ ...F{0} ... on Me {{ ...F{0} }} }}"),
    "wide": bomb(levels=5, fan=3, leaf=" ".join(["id"] * 100), spread="id role ...F{0}"),
    "empty fragments": bomb(levels=12, leaf=""),
    "twenty levels": bomb(levels=20),
}


@pytest.mark.parametrize("name", BOMBS)
def test_fragment_bombs_are_refused_quickly(name: str) -> None:
    assert QUERY_TOO_COMPLEX in timed_codes(BOMBS[name], limit_rules(Settings()))
    # graphql-core's own rules with ours, as the server runs them
    assert QUERY_TOO_COMPLEX in timed_codes(
        BOMBS[name], [*specified_rules, *limit_rules(Settings())]
    )


def test_aliases_are_counted_after_expansion() -> None:
    aliased = "\n".join(
        [
            "fragment F0 on Me { " + " ".join(f"a{i}: id" for i in range(10)) + " }",
            *(f"fragment F{n} on Me {{ {' '.join([f'...F{n - 1}'] * 10)} }}" for n in range(1, 8)),
            "{ me { ...F7 } }",
        ]
    )
    assert analyse(parse(aliased)).aliases == 10**8
    assert TOO_MANY_ALIASES in timed_codes(aliased, limit_rules(Settings()))
    huge = analyse(parse(bomb(levels=40, leaf="a: id")))
    assert huge.aliases == CAP  # capped: the true count has 41 digits
    [error] = check(bomb(levels=40, leaf="a: id"), [rule(selections=CAP)])
    assert error.message == f"more than {CAP - 1} aliases found. Allowed: 15"


def test_deep_nesting_up_to_the_parsers_limit() -> None:
    deep = "{ " + "me { " * 199 + "id" + " }" * 200
    assert codes(check(deep, limit_rules(Settings()))) == [QUERY_TOO_DEEP]
    # A chain of fragments is not limited by the parser: the walk must not recurse.
    chain = "\n".join(
        [
            "fragment F0 on Me { id }",
            *(f"fragment F{n} on Me {{ me {{ ...F{n - 1} }} }}" for n in range(1, 3000)),
            "{ me { ...F2999 } }",
        ]
    )
    assert our_depths(parse(chain)) == {"anonymous": 3000}
    assert QUERY_TOO_DEEP in timed_codes(chain, limit_rules(Settings()))
    everything = timed_codes(chain, [*specified_rules, *limit_rules(Settings())])
    assert QUERY_TOO_DEEP in everything  # graphql-core aborts after our rule reported


@pytest.mark.parametrize(
    "query",
    [
        "fragment A on Me { ...B } fragment B on Me { ...A id } { me { ...A } }",
        "fragment A on Me { id ...A } { me { ...A ...A } }",
        "fragment A on Me { me { ...B } } fragment B on Me { ... on Me { ...A } } "
        "query { me { ...B ...A } }",
        "{ me { ...Nope } }",
        "fragment A on Me { ...Nope id } { me { ...A } }",
        "{ me { } }",
        "fragment E on Me { } { me { ...E } }",
    ],
)
def test_cycles_and_unknown_fragments_neither_loop_nor_crash(query: str) -> None:
    errors = timed_codes(query, [*specified_rules, *limit_rules(Settings())])
    assert QUERY_TOO_COMPLEX not in errors and QUERY_TOO_DEEP not in errors
    analysis = analyse(parse(query))
    assert analysis.looked_at <= 2 * selection_count(parse(query))


def test_the_schema_refuses_the_bomb_with_its_code() -> None:
    """Through Strawberry's own execution (AddValidationRules with limit_rules)."""
    result = build_schema(Settings()).execute_sync(bomb())
    assert result.errors and codes(result.errors) == [QUERY_TOO_COMPLEX]


# --- the cost of the analysis itself ----------------------------------------------


def selection_count(document: DocumentNode) -> int:
    """Selections written in the document (not expanded)."""
    total = 0
    stack: list[Any] = [getattr(d, "selection_set", None) for d in document.definitions]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        total += len(node.selections)
        stack.extend(s.selection_set for s in node.selections if getattr(s, "selection_set", None))
    return total


Draw = Callable[[st.SearchStrategy[Any]], Any]


@st.composite
def fragment_documents(draw: Draw) -> str:
    """Nested fragments with random fan-out, aliases, inline fragments and nesting."""
    levels = draw(st.integers(1, 12))
    fragments = ["fragment F0 on Me { id }"]
    for level in range(1, levels + 1):
        parts = []
        for n in range(draw(st.integers(1, 10))):
            # Mostly the level below, as a bomb does; sometimes any lower one.
            below = draw(st.sampled_from([level - 1, level - 1, draw(st.integers(0, level - 1))]))
            spread = f"...F{below}"
            shape = draw(st.sampled_from(["plain", "alias", "inline", "nested", "intro"]))
            parts.append(
                {
                    "plain": spread,
                    "alias": f"a{n}: id {spread}",
                    "inline": f"... on Me {{ {spread} }}",
                    "nested": f"b{n}: me {{ {spread} }}",
                    "intro": f"__typename {spread}",
                }[shape]
            )
        fragments.append(f"fragment F{level} on Me {{ {' '.join(parts)} }}")
    top = draw(st.integers(0, levels))
    return "\n".join([*fragments, f"query {{ me {{ ...F{top} }} x: me {{ ...F{levels} }} }}"])


@settings(max_examples=150, deadline=None)
@given(fragment_documents())
def test_analysis_is_linear_in_the_document(query: str) -> None:
    document = parse(query)
    analysis = analyse(document)
    # Each selection written is looked at twice at most, however many times
    # fragments expand: the deterministic measure of the analysis's cost.
    assert analysis.looked_at <= 2 * selection_count(document)
    total = sum(cost.selections for _, cost in analysis.operations)
    if total < 20_000:  # small enough to expand naively and to run Strawberry's walk
        assert total == naive_selections(document)
        assert our_depths(document) == strawberry_depths(document)
        assert analysis.aliases == strawberry_aliases(document)
    # And the rule refuses what is too big, quickly (generous bound, shared machines).
    started = time.perf_counter()
    errors = codes(validate(schema(), document, [rule(selections=2000, aliases=10**6)]))
    assert time.perf_counter() - started < 0.05 * max(1, len(query) / 1024) + 0.5
    assert (QUERY_TOO_COMPLEX in errors) == any(c.selections > 2000 for _, c in analysis.operations)
