"""The multiplexer in-process, on the memory bus: sharing, framing, and a group
whose bus subscription fails ends its members instead of hanging them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.metrics import Metrics
from api.multiplex import Coalescer, Member, Multiplexer, Outbox
from api.plan import CACHED_VARIABLES_MAX_CHARS, Planner
from api.settings import Settings
from schema.build import build_schema, limit_rules
from schema.context import Context
from streams.bus import Bus

DOC = "subscription($n: String!) { channel(name: $n) { offset announcement { title } } }"
CHANNEL = "institution:x"


class RecordingSocket:
    """Stands in for Starlette's WebSocket at the one method the outbox calls."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.scope: dict[str, Any] = {}  # no server send: the outbox takes the ASGI path

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))


async def until(predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polling what another task writes
            await asyncio.sleep(0.01)


def setup() -> tuple[Bus, Multiplexer, Planner]:
    settings = Settings()
    schema = build_schema(settings)._schema
    bus = Bus.memory(history_size=10, history_ttl=60, queue_size=100)
    mux = Multiplexer(schema, bus, Metrics(), outbox_limit=100)
    planner = Planner(schema, max_tokens=2000, limit_rules=limit_rules(settings))
    return bus, mux, planner


def member(op_id: str, socket: RecordingSocket) -> Member:
    outbox = Outbox(socket, 100, lambda: None, Coalescer())  # type: ignore[arg-type]
    return Member(
        op_id, outbox, ('{"id":' + json.dumps(op_id) + ',"type":"next","payload":').encode()
    )


async def test_one_group_one_execution_each_member_its_own_id() -> None:
    bus, mux, planner = setup()
    await bus.connect()
    try:
        plan = planner.plan({"query": DOC, "variables": {"n": CHANNEL}})
        assert plan is not None
        plan = plan.__class__(
            **{**{f: getattr(plan, f) for f in plan.__slots__}, "channel": CHANNEL}
        )
        context = Context(request=None, services=None)  # type: ignore[arg-type]
        sockets = [RecordingSocket(), RecordingSocket()]
        members = [member(op, s) for op, s in zip(("a", "b"), sockets, strict=True)]
        for m in members:
            await mux.join(plan, context, m, None)
        assert mux.group_count == 1
        await bus.publish(CHANNEL, "announcement", {"announcement": _announcement("hi")})
        await until(lambda: all(s.frames for s in sockets))
        assert [s.frames[0]["id"] for s in sockets] == ["a", "b"]
        assert (
            sockets[0].frames[0]["payload"]
            == sockets[1].frames[0]["payload"]
            == {"data": {"channel": {"offset": 1, "announcement": {"title": "hi"}}}}
        )
        for m in members:
            await mux.leave(plan.group_key(context), m)
        assert mux.group_count == 0
    finally:
        await bus.close()


async def test_failed_bus_subscription_tells_members_why_and_frees_the_group() -> None:
    bus, mux, planner = setup()
    await bus.connect()
    await bus.hub.close()  # from now on every subscribe raises HubClosed
    try:
        plan = planner.plan({"query": DOC, "variables": {"n": CHANNEL}})
        assert plan is not None
        plan = plan.__class__(
            **{**{f: getattr(plan, f) for f in plan.__slots__}, "channel": CHANNEL}
        )
        socket = RecordingSocket()
        context = Context(request=None, services=None)  # type: ignore[arg-type]
        async with asyncio.timeout(5):  # must not hang waiting for a group that died
            await mux.join(plan, context, member("a", socket), None)
        await until(lambda: socket.frames)
        error = {"message": "server shutting down", "extensions": {"code": "SHUTTING_DOWN"}}
        assert socket.frames == [
            {"id": "a", "type": "next", "payload": {"data": None, "errors": [error]}},
            {"id": "a", "type": "complete"},
        ]
        assert mux.group_count == 0
    finally:
        await bus.close()


def test_equal_documents_share_one_query_string() -> None:
    """Group keys live as long as subscriptions: equal texts must not each keep a copy."""
    _, _, planner = setup()
    copy = "".join([DOC[:5], DOC[5:]])
    assert copy == DOC and copy is not DOC
    first = planner.plan({"query": DOC, "variables": {"n": CHANNEL}})
    second = planner.plan({"query": copy, "variables": {"n": CHANNEL}})
    assert first is not None and second is not None
    assert second.query is first.query


def test_equal_subscribe_payloads_share_one_plan_and_values_tell_them_apart() -> None:
    _, _, planner = setup()
    first = planner.plan({"query": DOC, "variables": {"n": CHANNEL}})
    again = planner.plan({"variables": {"n": CHANNEL}, "query": DOC})
    other = planner.plan({"query": DOC, "variables": {"n": CHANNEL + "y"}})
    assert first is not None and other is not None
    assert again is first  # coerced once, not per subscriber
    assert (first.name, other.name) == (CHANNEL, CHANNEL + "y")
    since = '{ channel(name: "institution:x", since: {offset: 3, epoch: $e}) { offset } }'
    resume = f"subscription($e: String!) {since}"
    a = planner.plan({"query": resume, "variables": {"e": "ab"}})
    b = planner.plan({"query": resume, "variables": {"e": "cd"}})
    assert a is not None and b is not None
    assert (a.since, b.since) == ({"offset": 3, "epoch": "ab"}, {"offset": 3, "epoch": "cd"})
    # Variables the operation does not accept: no plan (Strawberry answers the error).
    assert planner.plan({"query": DOC, "variables": {"n": 5}}) is None
    assert planner.plan({"query": DOC, "variables": {}}) is None
    # Large variables are planned but not kept: the cache outlives subscribers.
    big = {"n": CHANNEL, "unused": "x" * (CACHED_VARIABLES_MAX_CHARS + 1)}
    kept = planner._planned.cache_info().currsize
    plan = planner.plan({"query": DOC, "variables": big})
    assert plan is not None and plan.name == CHANNEL
    assert planner._planned.cache_info().currsize == kept


def _announcement(title: str) -> dict[str, str]:
    return {
        "id": "1",
        "channel": CHANNEL,
        "authorId": "u",
        "title": title,
        "body": "b",
        "priority": "normal",
        "createdAt": "2026-11-27T12:00:00+00:00",
    }


async def test_a_refused_replay_tells_its_member_why_and_frees_it() -> None:
    """A resume the replay desk cannot serve ends that member alone: UNAVAILABLE
    with retryAfter, then complete; it leaves its group (holding nothing more) and
    its connection forgets the operation; the other member goes on receiving."""
    from streams.replay import ReplayUnavailable

    bus, mux, planner = setup()
    await bus.connect()

    async def refuse(channel: str, since: Any) -> Any:
        raise ReplayUnavailable("too many subscriptions are resuming", 5)

    bus.replays.recover = refuse  # type: ignore[method-assign]
    try:
        plan = planner.plan({"query": DOC, "variables": {"n": CHANNEL}})
        assert plan is not None
        plan = plan.__class__(
            **{**{f: getattr(plan, f) for f in plan.__slots__}, "channel": CHANNEL}
        )
        context = Context(request=None, services=None)  # type: ignore[arg-type]
        live, resuming = RecordingSocket(), RecordingSocket()
        steady, refused = member("a", live), member("b", resuming)
        ended: list[str] = []
        refused.on_end = lambda: ended.append("b")
        await mux.join(plan, context, steady, None)
        first = await bus.publish(CHANNEL, "announcement", {"announcement": _announcement("x")})
        await mux.join(plan, context, refused, first.position)
        await until(lambda: len(resuming.frames) == 2)
        error = {
            "message": "too many subscriptions are resuming",
            "extensions": {"code": "UNAVAILABLE", "retryAfter": 5},
        }
        assert resuming.frames == [
            {"id": "b", "type": "next", "payload": {"data": None, "errors": [error]}},
            {"id": "b", "type": "complete"},
        ]
        assert ended == ["b"] and refused.pending is None
        (group,) = mux._groups.values()
        assert group.members == {steady}
        await bus.publish(CHANNEL, "announcement", {"announcement": _announcement("y")})
        await until(lambda: len(live.frames) == 2)
        assert [f["payload"]["data"]["channel"]["offset"] for f in live.frames] == [1, 2]
        assert len(resuming.frames) == 2
    finally:
        await bus.close()


async def test_a_member_never_goes_back_to_the_epoch_its_replay_left() -> None:
    """A live message of the old epoch, held while the replay found the channel
    reset into a new one (Redis restarted empty), is older than everything the
    replay sent: it is dropped, not delivered after the new epoch's messages (seen
    once in test_resets_are_monotonic)."""
    from api.multiplex import Frames
    from streams.envelope import Envelope, Position

    socket = RecordingSocket()
    one = member("1", socket)
    one.left = "old"
    one.floor = Position(3, "new")
    stale = Envelope(16, "old", CHANNEL, "announcement", {}, 0)
    fresh = Envelope(4, "new", CHANNEL, "announcement", {}, 0)
    assert not one.offer(stale, Frames(b'{"data":1}'))
    assert one.offer(fresh, Frames(b'{"data":2}'))
    await until(lambda: len(socket.frames) == 1)
    assert socket.frames[0]["payload"] == {"data": 2}
