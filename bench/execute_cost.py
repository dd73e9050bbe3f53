"""What graphql-core and Strawberry add to one mutation, apart from its resolver.

Why: profilers over the whole publish attribute to graphql-core's frames every
resumption of the resolver's coroutine (each ``await`` inside the resolver wakes
up through them). This runs the publish document (the schema's own
``PublishAnnouncementInput``, an object with an ``id`` back) against a resolver
that does nothing: through graphql-core's ``execute`` as ``api/http_fast.py``
calls it (a parsed and validated document, Strawberry's execution context, the
schema's input plans), through ``api/direct.py``'s plan (what the fast path runs
for this shape now), and as a direct call of the same resolver with the input
built by hand. The last is the floor any execution path could reach. With a
resolver that never suspends this understates what the generic executor costs
in a server, where every resumption passes through its frames.

    taskset -c 0 .venv/bin/python bench/execute_cost.py [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import strawberry
from graphql import OperationDefinitionNode, parse, validate

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from demo import CHANNEL  # noqa: E402
from publisher import BODY, MUTATION  # noqa: E402

from api.direct import plan_operation  # noqa: E402
from api.http_fast import FastHTTP  # noqa: E402
from api.plan import Request  # noqa: E402
from schema.announcements import Priority, PublishAnnouncementInput  # noqa: E402
from schema.inputs import plan_inputs  # noqa: E402


@strawberry.type
class Announcement:
    id: strawberry.ID
    title: str


async def publish(input: PublishAnnouncementInput) -> Announcement:
    return Announcement(id=strawberry.ID("1"), title=input.title)


@strawberry.type
class Query:
    ok: bool = True


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def publish_announcement(self, input: PublishAnnouncementInput) -> Announcement | None:
        return await publish(input)


SCHEMA = strawberry.Schema(query=Query, mutation=Mutation)
plan_inputs(SCHEMA)
DOCUMENT = parse(MUTATION)
if errors := validate(SCHEMA._schema, DOCUMENT):
    raise SystemExit(f"the publish document does not validate here: {errors}")
OPERATION = DOCUMENT.definitions[0]
assert isinstance(OPERATION, OperationDefinitionNode)
# Only _execute is used: the view, planner and metrics belong to the HTTP side.
FAST = FastHTTP(None, SCHEMA, None, None)  # type: ignore[arg-type]
PLAN = plan_operation(SCHEMA._schema, DOCUMENT, OPERATION)
if PLAN is None:
    raise SystemExit("api/direct.py has no plan for the publish document")


def variables(seq: int) -> dict[str, Any]:
    return {
        "input": {
            "channel": CHANNEL,
            "title": f"cost|{seq}",
            "body": BODY,
            "priority": "NORMAL",
        }
    }


async def through_graphql(count: int) -> None:
    for seq in range(count):
        prepared = Request(MUTATION, DOCUMENT, OPERATION, None, variables(seq), None)
        data, errors = await FAST._execute(prepared, None)  # type: ignore[arg-type]
        if errors or data != {"publishAnnouncement": {"id": "1"}}:
            raise SystemExit(f"unexpected result: {data} {errors}")


async def through_direct_plan(count: int) -> None:
    """The same document through ``api/direct.py``, as the fast path now runs it."""
    for seq in range(count):
        prepared = Request(MUTATION, DOCUMENT, OPERATION, None, variables(seq), None, PLAN)
        data, errors = await FAST._execute(prepared, None)  # type: ignore[arg-type]
        if errors or data != {"publishAnnouncement": {"id": "1"}}:
            raise SystemExit(f"unexpected result: {data} {errors}")


async def direct(count: int) -> None:
    for seq in range(count):
        given = variables(seq)["input"]
        built = PublishAnnouncementInput(
            channel=given["channel"],
            title=given["title"],
            body=given["body"],
            priority=Priority[given["priority"]],  # GraphQL sends the name
        )
        announcement = await publish(built)
        data = {"publishAnnouncement": {"id": announcement.id}}
        if data["publishAnnouncement"]["id"] != "1":
            raise SystemExit(f"unexpected result: {data}")


async def cpu_us(run: Callable[[int], Awaitable[None]], count: int) -> float:
    await run(max(count // 10, 1))  # warm-up
    started = time.process_time()
    await run(count)
    return (time.process_time() - started) / count * 1e6


async def measure(count: int, rounds: int) -> dict[str, float]:
    graphql = [await cpu_us(through_graphql, count) for _ in range(rounds)]
    planned = [await cpu_us(through_direct_plan, count) for _ in range(rounds)]
    plain = [await cpu_us(direct, count) for _ in range(rounds)]
    return {"graphql_us": min(graphql), "plan_us": min(planned), "direct_us": min(plain)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=3, help="the minimum is reported")
    args = parser.parse_args()
    found = asyncio.run(measure(args.count, args.rounds))
    print(
        f"through graphql-core + Strawberry: {found['graphql_us']:.1f} us CPU per operation\n"
        f"through api/direct.py's plan:      {found['plan_us']:.1f} us CPU per operation\n"
        f"the resolver called directly:      {found['direct_us']:.1f} us CPU per operation\n"
        f"executor overhead:                 {found['graphql_us'] - found['direct_us']:.1f} us"
        f" (api/direct.py: {found['plan_us'] - found['direct_us']:.1f} us)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
