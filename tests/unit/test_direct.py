"""api.direct answers exactly what graphql-core's executor answers, errors included.

The public schema cannot make a resolver return null, the wrong type or a value its
scalar refuses, so this builds a small Strawberry schema that can, and runs every
document both ways through ``FastHTTP._execute`` (with and without the direct
plan): data and formatted errors must be equal, case by case.
"""

from __future__ import annotations

import asyncio
import math
from enum import Enum
from typing import Any

import pytest
import strawberry
from graphql import (
    GraphQLList,
    GraphQLNonNull,
    GraphQLString,
    OperationDefinitionNode,
    parse,
    validate,
)
from strawberry.permission import BasePermission
from strawberry.types.unset import UNSET

from api.direct import _type_depth, plan_operation
from api.http_fast import FastHTTP
from api.plan import Request
from api.resolver_plan import plan_resolver
from schema.inputs import InputPlan


@strawberry.enum
class Mood(Enum):
    HAPPY = "happy"
    SAD = "sad"


@strawberry.interface
class Named:
    """Implementing an interface gives Thing an ``is_type_of`` check in Strawberry."""

    name: str


@strawberry.type
class Thing(Named):
    count: int
    mood: Mood
    note: str | None = None


class Exploding(Thing):
    """A Thing whose ``note`` raises when read (a leaf that fails)."""

    @property  # type: ignore[override]
    def note(self) -> str | None:
        raise ValueError("note failed")

    @note.setter
    def note(self, value: str | None) -> None:
        pass


@strawberry.type
class Other:
    name: str


def make(kind: str) -> Any:
    if kind == "none":
        return None
    if kind == "raise":
        raise RuntimeError("resolver failed")
    if kind == "error-value":
        return ValueError("returned, not raised")
    if kind == "badcount":
        return Thing(name="n", count="abc", mood=Mood.SAD)  # type: ignore[arg-type]
    if kind == "nullname":
        return Thing(name=None, count=1, mood=Mood.HAPPY)  # type: ignore[arg-type]
    if kind == "badnote":
        return Exploding(name="n", count=2, mood=Mood.HAPPY)
    if kind == "badmood":
        return Thing(name="n", count=3, mood="GRUMPY")  # type: ignore[arg-type]
    if kind == "other":
        return Other(name="not a thing")
    return Thing(name=f"thing {kind}", count=7, mood=Mood.HAPPY, note="a note")


@strawberry.input
class ThingInput:
    kind: str
    count: int = 1


class NoSecrets(BasePermission):
    message = "no secrets here"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return bool(kwargs.get("kind") != "secret")


@strawberry.input
class PlannedInput:
    """Built by schema/inputs.py's plan through Strawberry's ``from_input`` hook, as
    the app's input types are (ThingInput keeps Strawberry's own conversion)."""

    kind: str
    mood: Mood = Mood.HAPPY
    tags: list[str] | None = None


PlannedInput.__strawberry_definition__.from_input = InputPlan(  # type: ignore[attr-defined]
    PlannedInput.__strawberry_definition__  # type: ignore[attr-defined]
)


@strawberry.input
class Tree:
    """An input type that contains itself: values of it can nest without limit."""

    name: str
    children: list[Tree] | None = None


def count_nodes(tree: Tree) -> int:
    return 1 + sum(count_nodes(child) for child in tree.children or [])


def deep_tree(levels: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"name": "leaf"}
    for _ in range(levels):
        tree = {"name": "node", "children": [tree]}
    return tree


def rooted(root: Any, kind: str) -> Thing:
    """A resolver that asks for the source by the reserved name ``root``."""
    return Thing(name=f"{kind} under {root!r}", count=0, mood=Mood.SAD)


@strawberry.type
class Query:
    rooted: Thing = strawberry.field(resolver=rooted)

    @strawberry.field
    def pick(
        self,
        where: strawberry.Info,
        mood: Mood = Mood.SAD,
        tags: list[str] | None = None,
        limit: int | None = UNSET,
    ) -> Thing:
        """Arguments left out, given and null; the info under another name."""
        name = f"{mood}|{tags}|{limit!r}|{type(where).__name__}|{where.field_name}"
        return Thing(name=name, count=len(tags or []), mood=mood)

    @strawberry.field
    def echo(self, id: strawberry.ID) -> Thing:
        """Shows the argument as the resolver got it: an ID variable given as a
        number reaches it as a string only if the variable was coerced."""
        return Thing(name=repr(id), count=0, mood=Mood.SAD)

    @strawberry.field
    def grow(self, tree: Tree) -> Thing:
        return Thing(name=tree.name, count=count_nodes(tree), mood=Mood.HAPPY)

    @strawberry.field(permission_classes=[NoSecrets])
    def guarded(self, kind: str) -> Thing:
        return make(kind)  # type: ignore[no-any-return]

    @strawberry.field
    def maybe(self, kind: str = "ok") -> Thing | None:
        return make(kind)  # type: ignore[no-any-return]

    @strawberry.field
    def must(self, kind: str) -> Thing:
        return make(kind)  # type: ignore[no-any-return]

    @strawberry.field
    async def later(self, kind: str) -> Thing | None:
        await asyncio.sleep(0)
        return make(kind)  # type: ignore[no-any-return]

    @strawberry.field
    def things(self) -> list[Thing]:
        return [make("ok")]

    @strawberry.field
    async def helped(self, info: strawberry.Info, fail: bool = False) -> Thing:
        """Uses graphql-core's async helpers, as a resolver may: tracked work runs
        at once in the background, and gather fails as a whole when one part does."""
        helpers = info._raw_info.async_helpers
        done: list[str] = []

        async def part(name: str) -> str:
            await asyncio.sleep(0)
            if fail and name == "b":
                raise RuntimeError("part b failed")
            return name

        async def tracked() -> None:
            await asyncio.sleep(0.01)
            done.append("tracked")

        helpers.track([tracked()])
        names = await helpers.gather([part("a"), part("b")])
        await asyncio.sleep(0.02)  # long enough for the tracked work, if it was started
        return Thing(name="+".join([*names, *done]), count=len(names), mood=Mood.HAPPY)


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create(self, input: ThingInput) -> Thing:
        thing = make(input.kind)
        if isinstance(thing, Thing) and input.kind == "ok":
            thing.count = input.count
        return thing  # type: ignore[no-any-return]

    @strawberry.mutation
    async def shape(self, input: PlannedInput, extra: ThingInput | None = UNSET) -> Thing:
        return Thing(name=f"{input!r}|{extra!r}", count=1, mood=input.mood)


SCHEMA = strawberry.Schema(query=Query, mutation=Mutation)
FAST = FastHTTP(None, SCHEMA, None, None)  # type: ignore[arg-type]

LEAVES = "name count mood note __typename"
KINDS = ["ok", "none", "raise", "error-value", "badcount", "nullname", "badnote", "badmood",
         "other"]  # fmt: skip
DIRECT = [
    (f'{{ maybe(kind: "{kind}") {{ {LEAVES} }} }}', None) for kind in KINDS
] + [
    (f'{{ must(kind: "{kind}") {{ {LEAVES} }} }}', None) for kind in KINDS
] + [
    (f"query($k: String!) {{ later(kind: $k) {{ {LEAVES} }} }}", {"k": kind}) for kind in KINDS
] + [
    ("query Q($k: String = \"ok\") { a: maybe(kind: $k) { n: name t: __typename c: count } }",
     {}),
    ("query($k: String!) { must(kind: $k) { name } }", {}),  # missing variable
    ("query($k: String!) { must(kind: $k) { name } }", {"k": 5}),  # wrong type
    ("query($k: String!) { must(kind: $k) { name } }", {"k": "ok", "unused": [1]}),
    ("{ helped { name count } }", None),
    ("{ helped(fail: true) { name count } }", None),
    ("mutation($i: ThingInput!) { create(input: $i) { count name __typename } }",
     {"i": {"kind": "ok", "count": 41}}),
    ("mutation($i: ThingInput!) { create(input: $i) { count } }", {"i": {"kind": "raise"}}),
    ("mutation($i: ThingInput!) { create(input: $i) { count } }", {"i": {"kind": "nullname"}}),
    ("mutation($i: ThingInput!) { create(input: $i) { name } }",
     {"i": {"kind": "ok", "count": "x"}}),
    ("mutation($i: ThingInput!) { create(input: $i) { name } }", {"i": {"count": 1}}),
    # two coercion errors in one variable: both reported (graphql-core's limit is 50)
    ("mutation($i: ThingInput!) { create(input: $i) { name } }", {"i": {"count": "x"}}),
    # api.resolver_plan: arguments left out, given, null; reserved parameters
    ("{ pick { name count mood } }", None),
    ('{ pick(mood: HAPPY, tags: ["a", "b"], limit: null) { name count } }', None),
    ("query($t: [String!]) { pick(tags: $t, limit: 3) { name } }", {"t": ["x"]}),
    ("query($t: [String!]) { pick(tags: $t) { name } }", {}),
    ('{ rooted(kind: "k") { name } }', None),
    ("query($i: ID!) { echo(id: $i) { name } }", {"i": 5}),
    ("query($i: ID!) { echo(id: $i) { name } }", {"i": "five"}),
    # a variable of a type that contains itself: checked for depth, too deep refused
    ("query($t: Tree!) { grow(tree: $t) { name count } }", {"t": deep_tree(3)}),
    ("query($t: Tree!) { grow(tree: $t) { name count } }", {"t": deep_tree(150)}),
    ('{ guarded(kind: "ok") { name } }', None),
    ('{ guarded(kind: "secret") { name } }', None),
    ("mutation($i: PlannedInput!, $e: ThingInput) { shape(input: $i, extra: $e) { name mood } }",
     {"i": {"kind": "k", "tags": ["t"]}, "e": {"kind": "e"}}),
    ("mutation($i: PlannedInput!, $e: ThingInput) { shape(input: $i, extra: $e) { name mood } }",
     {"i": {"kind": "k", "mood": "SAD"}}),
    ("mutation($i: PlannedInput!, $e: ThingInput) { shape(input: $i, extra: $e) { name } }",
     {"i": {"kind": "k"}, "e": None}),
    ('mutation { shape(input: {kind: "lit", tags: []}) { name } }', None),
]  # fmt: skip
# Shapes api.direct leaves to graphql-core: they must get no plan.
NOT_PLANNED = [
    "{ maybe { name } must(kind: \"ok\") { name } }",  # two root fields
    "{ things { name } }",  # a list
    "{ maybe { name name } }",  # a repeated key
    "{ maybe @include(if: true) { name } }",  # a directive
    "{ maybe { ...F } } fragment F on Thing { name }",  # a fragment
    "{ maybe { ... on Thing { name } } }",  # an inline fragment
    "{ __typename }",  # no object below the root
    "query A { maybe { name } } query B { must(kind: \"ok\") { name } }",  # two operations
]  # fmt: skip


def document(query: str) -> tuple[Any, OperationDefinitionNode]:
    doc = parse(query)
    assert not validate(SCHEMA._schema, doc), query
    operation = doc.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    return doc, operation


def run(query: str, variables: dict[str, Any] | None, direct: bool) -> tuple[Any, list[Any]]:
    doc, operation = document(query)
    plan = plan_operation(SCHEMA._schema, doc, operation) if direct else None
    if direct:
        assert plan is not None, query
    request = Request(query, doc, operation, None, variables or {}, None, plan)
    data, errors = asyncio.run(FAST._execute(request, None))  # type: ignore[arg-type]
    return data, [e.formatted for e in errors]


@pytest.mark.parametrize(("query", "variables"), DIRECT)
def test_direct_answers_like_graphql_core(query: str, variables: dict[str, Any] | None) -> None:
    assert run(query, variables, direct=True) == run(query, variables, direct=False)


def test_the_cases_cover_data_and_each_kind_of_error() -> None:
    """The comparison above is only worth something if the cases differ in kind."""
    answers = [run(q, v, direct=False) for q, v in DIRECT]
    assert any(data is None for data, _ in answers)  # a non-null root nulled
    assert any(data is not None and errors for data, errors in answers)  # partial data
    messages = {e["message"] for _, errors in answers for e in errors}
    assert "resolver failed" in messages and "note failed" in messages
    assert "Cannot return null for non-nullable field Thing.name." in messages
    assert SCHEMA._schema.type_map["Thing"].is_type_of is not None  # type: ignore[union-attr]
    assert any(m.startswith("Expected value of type 'Thing' but got: <Other") for m in messages)
    assert any(m.startswith("Int cannot represent") for m in messages)
    assert any("Variable '$k'" in m for m in messages)
    ok = run('{ maybe(kind: "ok") { name count mood note __typename } }', None, direct=True)
    assert ok == (
        {"maybe": {"name": "thing ok", "count": 7, "mood": "HAPPY", "note": "a note",
                   "__typename": "Thing"}},
        [],
    )  # fmt: skip


def test_type_depth_counts_lists_and_input_objects() -> None:
    types = SCHEMA._schema.type_map
    assert _type_depth(GraphQLNonNull(GraphQLString)) == 0
    assert _type_depth(GraphQLList(GraphQLList(GraphQLString))) == 2
    assert _type_depth(types["ThingInput"]) == 1  # type: ignore[arg-type]
    assert _type_depth(types["PlannedInput"]) == 2  # type: ignore[arg-type]  # tags: [String]
    assert _type_depth(types["Tree"]) == math.inf  # type: ignore[arg-type]
    data, errors = run(
        "query($t: Tree!) { grow(tree: $t) { count } }", {"t": deep_tree(150)}, direct=True
    )
    assert data is None and errors[0]["message"] == "Variable values are nested too deeply."


def test_resolvers_are_planned_unless_something_runs_around_them() -> None:
    query, mutation = SCHEMA._schema.query_type, SCHEMA._schema.mutation_type
    assert query is not None and mutation is not None
    for field in ("maybe", "must", "later", "helped", "pick", "rooted"):
        assert plan_resolver(SCHEMA._schema, query.fields[field]) is not None, field
    for field in ("create", "shape"):
        assert plan_resolver(SCHEMA._schema, mutation.fields[field]) is not None, field
    # permission classes are a field extension: Strawberry's wrapper runs them
    assert plan_resolver(SCHEMA._schema, query.fields["guarded"]) is None
    denied = run('{ guarded(kind: "secret") { name } }', None, direct=True)
    assert denied[1][0]["message"] == "no secrets here"
    picked = run('{ pick(tags: ["a"]) { name } }', None, direct=True)
    assert picked[0] == {"pick": {"name": "Mood.SAD|['a']|UNSET|Info|pick"}}


@pytest.mark.parametrize("query", NOT_PLANNED)
def test_other_shapes_get_no_plan(query: str) -> None:
    doc = parse(query)
    assert not validate(SCHEMA._schema, doc), query
    operation = doc.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    assert plan_operation(SCHEMA._schema, doc, operation) is None
