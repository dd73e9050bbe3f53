"""The graphql-transport-ws side of multiplexing: intercept ``subscribe`` messages
that :class:`api.plan.Planner` accepts and serve them from shared groups.

Everything a client can observe matches Strawberry's own handling: 4401 before
``connection_init``, 4409 for a duplicate id, the per-connection subscription limit,
errors as a ``next`` with errors followed by ``complete``, and ``complete`` ending a
subscription. Documents the planner declines fall through to Strawberry.

A multiplexed operation is registered in Strawberry's own ``operations``, as an
:class:`_Op`, so that one count governs both paths: Strawberry's duplicate-id and
subscription-limit checks see multiplexed operations, and ours see Strawberry's.
Strawberry touches other entries only by its own operations' ids; ``complete`` and
``shutdown`` take ours out before its code would treat them as its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError
from starlette.websockets import WebSocket

from api.multiplex import Member, Outbox, error_frames
from api.plan import Planner
from resolvers.access import authorize
from resolvers.emit import emit
from schema.context import Context
from schema.errors import ApiError
from streams.acl import Action
from streams.channels import parse_channel
from streams.envelope import Position


@dataclass(eq=False, slots=True)
class _Op:
    """A multiplexed operation, in the handler's ``operations`` by its id."""

    key: tuple[Any, ...]  # the group's
    channel: str
    member: Member


class MultiplexedSubscribe:
    """Mixin for :class:`BaseGraphQLTransportWSHandler` subclasses."""

    context: Context
    operations: dict[str, Any]  # Strawberry's Operation objects and our _Op
    connection_acknowledged: bool
    max_subscriptions_per_connection: int | None
    planner: Planner
    _outbox: Outbox | None

    if TYPE_CHECKING:  # provided by the protocol handler this is mixed into

        async def send_message(self, message: Any) -> None: ...

    def _init_mux(self) -> None:
        self._outbox = None

    async def handle_subscribe(self, message: Any) -> None:
        op_id = message.get("id")
        plan = self.planner.plan(message.get("payload")) if self.connection_acknowledged else None
        if plan is None or not isinstance(op_id, str):
            await super().handle_subscribe(message)  # type: ignore[misc]
            return
        websocket = self.context.request
        assert isinstance(websocket, WebSocket)
        # Strawberry's checks, on the same dict its own path checks.
        if op_id in self.operations:
            await websocket.close(code=4409, reason=f"Subscriber for {op_id} already exists")
            return
        limit = self.max_subscriptions_per_connection
        if limit is not None and len(self.operations) >= limit:
            error = GraphQLError("Subscription limit reached")
            await self.send_message({"id": op_id, "type": "error", "payload": [error.formatted]})
            return
        try:
            channel = await authorize(self.context, plan.name, Action.SUBSCRIBE)
        except ApiError as exc:
            for frame in error_frames(op_id, exc):
                await websocket.send_text(frame)
            return
        plan = replace(plan, channel=channel.name)
        services = self.context.services
        if self._outbox is None:
            self._outbox = Outbox(
                websocket,
                services.mux.outbox_limit,
                self.context.on_overflow,
                services.mux.coalescer,
                services.mux.raw_socket(websocket),
            )
            services.metrics.mux_connections.labels(write=self._outbox.write_path).inc()
        prefix = ('{"id":' + json.dumps(op_id) + ',"type":"next","payload":').encode()
        member = Member(op_id, self._outbox, prefix)
        op = self.operations[op_id] = _Op(plan.group_key(self.context), channel.name, member)
        member.on_end = lambda: self._ended(op_id, op)
        since = Position(int(plan.since["offset"]), plan.since["epoch"]) if plan.since else None
        await services.mux.join(plan, self.context, member, since)
        emit(
            services,
            self.context.viewer,
            "subscription.start",
            {"channel": channel.name},
            channel=channel,
        )
        # Strawberry's read loop holds this message until the next one arrives, which
        # for a subscriber may be never: ~1.3 KB per connection of a document and
        # variables the group already has. Nothing reads it after this handler.
        message.clear()

    async def handle_complete(self, message: Any) -> None:
        op_id = message.get("id")
        op = self.operations.get(op_id)
        if not isinstance(op, _Op):
            await super().handle_complete(message)  # type: ignore[misc]
            return
        del self.operations[op_id]
        await self._leave(op)

    def _ended(self, op_id: str, op: _Op) -> None:
        """The multiplexer ended ``op`` (and told the client why): forget it here, so
        the id may be used again and it stops counting against the limit."""
        if self.operations.get(op_id) is op:
            del self.operations[op_id]
            self._stopped(op)

    async def _leave(self, op: _Op) -> None:
        await self.context.services.mux.leave(op.key, op.member)
        self._stopped(op)

    def _stopped(self, op: _Op) -> None:
        emit(
            self.context.services,
            self.context.viewer,
            "subscription.stop",
            {"channel": op.channel},
            channel=parse_channel(op.channel),
        )

    async def shutdown(self) -> None:
        # Before Strawberry's shutdown, which would cancel every entry's task.
        for op_id, op in list(self.operations.items()):
            if isinstance(op, _Op):
                del self.operations[op_id]
                await self._leave(op)
        if self._outbox is not None:
            await self._outbox.close()
            self.context.services.metrics.mux_connections.labels(
                write=self._outbox.write_path
            ).dec()
        await super().shutdown()  # type: ignore[misc]
