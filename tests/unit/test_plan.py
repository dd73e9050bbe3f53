"""The planner: which payloads it takes from Strawberry, and which subscriptions must
be grouped per viewer, from what the schema declares on its fields."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
import strawberry

from api.plan import Plan, Planner
from api.settings import Settings
from schema.build import build_schema, limit_rules
from schema.viewer import VIEWER_DEPENDENT


@strawberry.interface
class Person:
    name: str
    is_me: bool  # declared viewer-dependent by one implementation only


@strawberry.type
class Author(Person):
    is_me: bool = strawberry.field(resolver=lambda: False, metadata=VIEWER_DEPENDENT)


@strawberry.type
class Editor(Person):
    """Has an ``isMe`` too, but not a viewer-dependent one: keyed by type, not name."""


@strawberry.type
class Post:
    title: str
    author: Author
    editor: Editor
    by: Person


@strawberry.type
class Query:
    hello: str = "hi"


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def channel(self, name: str) -> AsyncGenerator[Post]:  # pragma: no cover
        yield Post(
            title=name,
            author=Author(name="a"),
            editor=Editor(name="e", is_me=False),
            by=Editor(name="e", is_me=False),
        )


def small_planner() -> Planner:
    schema = strawberry.Schema(query=Query, subscription=Subscription, types=[Author, Editor])
    return Planner(schema._schema, max_tokens=2000, limit_rules=[])


def per_viewer(planner: Planner, selection: str, fragments: str = "") -> bool:
    query = f"subscription($n: String!) {{ channel(name: $n) {{ {selection} }} }} {fragments}"
    plan = planner.plan({"query": query, "variables": {"n": "c"}})
    assert plan is not None, query
    return plan.per_viewer


@pytest.mark.parametrize(
    ("selection", "fragments"),
    [
        ("author { isMe }", ""),
        ("author { ...A }", "fragment A on Author { isMe }"),
        ("author { ... on Author { isMe } }", ""),
        ("...P", "fragment P on Post { title author { name isMe } }"),
        ("... on Post { author { ... { isMe } } }", ""),
        ("by { ... on Author { isMe } }", ""),
        ("by { isMe }", ""),  # through the interface: it may be an Author's
        ("by { ...I }", "fragment I on Person { isMe }"),
    ],
)
def test_selecting_a_viewer_dependent_field_groups_per_viewer(
    selection: str, fragments: str
) -> None:
    assert per_viewer(small_planner(), selection, fragments)


@pytest.mark.parametrize(
    ("selection", "fragments"),
    [
        ("title author { name }", ""),
        ("editor { isMe }", ""),  # the same name on a type that did not declare it
        ("editor { ...E }", "fragment E on Editor { isMe }"),
        ("by { ... on Editor { isMe } name }", ""),
        ("...P", "fragment P on Post { title author { name } }"),
    ],
)
def test_other_selections_are_shared(selection: str, fragments: str) -> None:
    assert not per_viewer(small_planner(), selection, fragments)


def test_from_me_is_declared_viewer_dependent_in_the_real_schema() -> None:
    settings = Settings()
    planner = Planner(
        build_schema(settings)._schema, max_tokens=2000, limit_rules=limit_rules(settings)
    )
    shared = "offset announcement { title }"
    assert not per_viewer(planner, shared)
    assert per_viewer(planner, f"{shared} fromMe")
    assert per_viewer(planner, "...F", "fragment F on ChannelEvent { fromMe }")
    assert per_viewer(planner, "... on ChannelEvent { fromMe }")


@pytest.mark.parametrize("variables", [0, False, "", [], [1], "x"])
def test_variables_that_are_not_an_object_leave_the_request_to_strawberry(
    variables: Any,
) -> None:
    """Strawberry answers them with 400 (HTTP) or its own error (WebSocket); only a
    missing or null ``variables`` means none."""
    planner = small_planner()
    assert planner.operation({"query": "{ hello }", "variables": variables}) is None
    document = 'subscription { channel(name: "c") { title } }'
    assert planner.plan({"query": document, "variables": variables}) is None


@pytest.mark.parametrize("payload", [{}, {"variables": None}, {"variables": {}}])
def test_missing_or_null_variables_mean_none(payload: dict[str, Any]) -> None:
    planner = small_planner()
    assert planner.operation({"query": "{ hello }", **payload}) is not None
    document = 'subscription { channel(name: "c") { title } }'
    assert planner.plan({"query": document, **payload}) is not None


def real_planner() -> Planner:
    settings = Settings()
    return Planner(
        build_schema(settings)._schema, max_tokens=2000, limit_rules=limit_rules(settings)
    )


def channel_plan(arguments: str, c: object = None) -> Plan | None:
    """The plan of ``channel(<arguments>) { offset }``, with ``$c`` declared if used."""
    declared = "($c: String)" if "$c" in arguments else ""
    args = f"({arguments})" if arguments else ""
    query = f"subscription{declared} {{ channel{args} {{ offset }} }}"
    return real_planner().plan({"query": query, "variables": {"c": c} if declared else {}})


@pytest.mark.parametrize(
    ("arguments", "c", "channel"),
    [
        ('channel: "institution:northwood"', None, "institution:northwood"),
        ('name: "institution:northwood"', None, "institution:northwood"),  # deprecated
        ("channel: $c", "institution:riverside", "institution:riverside"),
        ("name: $c", "institution:riverside", "institution:riverside"),
        ('channel: $c, name: null, since: {offset: 1, epoch: "e"}', "x", "x"),
        ('channel: $c, name: "b"', None, "b"),  # a null channel is no channel
    ],
)
def test_the_channel_argument_and_its_deprecated_name_plan_alike(
    arguments: str, c: object, channel: str
) -> None:
    plan = channel_plan(arguments, c)
    assert plan is not None and plan.name == channel


@pytest.mark.parametrize(
    ("arguments", "c"),
    [
        ('channel: "a", name: "b"', None),
        ("", None),
        ("channel: null", None),
        ("channel: $c", None),
        ('channel: $c, name: "b"', "a"),
    ],
)
def test_both_or_neither_channel_argument_is_left_to_strawberry(arguments: str, c: object) -> None:
    """Strawberry's path answers BAD_INPUT (resolvers.channels.requested)."""
    assert channel_plan(arguments, c) is None


@pytest.mark.parametrize(
    ("selection", "fragments"),
    [
        ("announcement { author { displayName } }", ""),
        ("notification { sender { id } }", ""),
        ("alert { raisedByUser { id } }", ""),
        ("alert { acknowledgedByMeAt }", ""),
        ("...F", "fragment F on ChannelEvent { announcement { author { id } } }"),
        ("announcement { ...A }", "fragment A on Announcement { author { id } }"),
    ],
)
def test_selections_that_read_the_database_take_strawberrys_path(
    selection: str, fragments: str
) -> None:
    """A group executes synchronously (api.multiplex); these fields are coroutines."""
    query = f'subscription {{ channel(channel: "c") {{ {selection} }} }} {fragments}'
    assert real_planner().plan({"query": query}) is None


def test_selections_without_such_fields_are_still_multiplexed() -> None:
    selection = (
        "offset epoch type kind fromMe announcement { id authorId title priority } "
        "alert { id raisedById raisedBy rollCall { pendingCount } } notification { senderId }"
    )
    query = f'subscription {{ channel(channel: "c") {{ {selection} }} }}'
    assert real_planner().plan({"query": query}) is not None
