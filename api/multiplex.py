"""Multiplexed channel subscriptions: execute and encode once, write to many.

Plain Strawberry runs one async generator per subscriber and re-executes and
re-encodes every message for each of them. Here, subscribers of one process with
the same (channel, document, operation, variables, visibility) form a *group*:
each message is executed and JSON-encoded once for the group, and every member's
frame is that payload with its own operation id around it. Frames go to one bounded
outbox per connection: written straight to its socket, a burst's frames in one
write (:class:`Coalescer`), and queued with a drain task only under back-pressure;
a connection whose outbox overflows is closed with 4008, without delaying anyone
else.

Only documents whose single root field is ``channel`` take this path (planned by
:func:`plan`); everything else, and the legacy ``graphql-ws`` protocol, runs through
Strawberry unchanged. Fields whose value depends on the viewer (``VIEWER_FIELDS``)
put the viewer into the group key, so nothing is shared across viewers who may see
different data.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from graphql import GraphQLError, GraphQLSchema, execute
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.frames import frame_text, text_frame
from api.metrics import Metrics
from api.plan import Plan
from schema.announcements import ChannelEvent
from schema.context import Context
from schema.errors import ApiError, ShuttingDown, Unavailable, masked
from streams.bus import Bus
from streams.envelope import Envelope, Position
from streams.hub import ChannelUnavailable, HubClosed, Item, Reset
from streams.replay import ReplayUnavailable

if TYPE_CHECKING:  # imported only when the rawsocket fast path is on (api/accel)
    from api.rawsocket import RawSocket

log = structlog.get_logger(__name__)

# Frames one connection holds in a burst before they are written early: the most a
# burst adds to the transport's buffer past the high-water mark at which uvicorn
# pauses writing, so a peer that stopped reading still meets back-pressure and the
# 4008 cut within a burst, not only at the next one.
HOLD_MAX = 32


class Coalescer:
    """Frames for one connection from a burst of messages leave in one write.

    Why: at saturation, 70% of the server's CPU was ``transport.write``, one
    ``send`` syscall per frame; on loopback the sender's syscall also runs the
    receiver's TCP path. Group commit hands several publishes back at once, so a
    group's pump finds several messages waiting, and each connection got one
    syscall per message. While a pump fans out a message with more queued behind
    it, it sets :attr:`holding`: frames are held per connection, and one
    ``call_soon`` writes every held connection's frames as one buffer after the
    burst. The last message of a burst, and any message that arrives alone, is
    written directly as before (after what its connection holds), so a steady low
    rate sees no added latency and nothing ever waits on a timer. Centrifugo
    coalesces writes per connection for the same reason.
    """

    __slots__ = ("_dirty", "_scheduled", "_after", "holding")

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._scheduled = False
        self._after: list[Callable[[], None]] = []
        self.holding = False  # set by a pump only while it fans out a burst

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        self._schedule()

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the held frames are written (latency metrics)."""
        self._after.append(callback)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        after, self._after = self._after, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:  # one broken socket must not keep frames from the rest
                log.exception("ws.flush_failed")
        for callback in after:
            callback()


class Outbox:
    """One connection's bounded queue of encoded frames.

    A frame is written straight to the socket when nothing is held or queued ahead
    of it and the socket takes it without back-pressure (:class:`RawSocket`); during
    a burst it is held and written with the burst's other frames
    (:class:`Coalescer`); only otherwise is it queued, and a drain task exists only
    while the queue is not empty. A queue that reaches ``limit`` means the peer is
    not reading: the connection is closed (4008) rather than slowing anyone else
    down.
    """

    __slots__ = (
        "_websocket",
        "_raw",
        "_limit",
        "_on_overflow",
        "_coalescer",
        "_held",
        "_frames",
        "_room",
        "_task",
        "_closed",
        "overflowed",
    )

    def __init__(
        self,
        websocket: WebSocket,
        limit: int,
        on_overflow: Callable[[], None],
        coalescer: Coalescer,
        raw: RawSocket | None = None,
    ) -> None:
        """``raw``: the connection's transport when frames may be written to it
        directly (the ``rawsocket`` fast path), else None: every frame takes the
        ASGI send path."""
        self._websocket = websocket
        self._raw = raw
        self._limit = limit
        self._on_overflow = on_overflow
        self._coalescer = coalescer
        self._held: list[bytes] | None = None  # this burst's frames, not yet written
        # Created on first use and dropped when drained: an idle connection should
        # not carry a queue and an event (~1.5 KB with their deques) it rarely needs.
        self._frames: deque[bytes] | None = None
        self._room: asyncio.Event | None = None  # for replay, waiting for the queue
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.overflowed = False

    @property
    def queued(self) -> int:
        """Frames pushed but not yet handed to the socket."""
        return len(self._frames or ()) + len(self._held or ())

    async def drained(self, limit: float) -> None:
        """Wait (at most ``limit`` seconds) until what was pushed so far is written:
        a last frame before a close must not be cut off by the close."""
        await asyncio.sleep(0)  # frames held in a burst go out in the coalescer's call_soon
        task = self._task
        if task is not None:
            await asyncio.wait({task}, timeout=limit)

    @property
    def write_path(self) -> str:
        """ "direct" when frames bypass the ASGI send path on this connection."""
        return "asgi" if self._raw is None else "direct"

    def push(self, frame: bytes) -> None:
        if self.overflowed or self._closed:
            return
        held = self._held
        if held is not None:  # behind this burst's frames, in order
            held.append(frame)
            if len(held) >= min(HOLD_MAX, self._limit):
                self.flush()  # early, so back-pressure is checked within the burst
            return
        raw = self._raw
        if not self._frames and raw is not None:
            if self._coalescer.holding:
                self._held = [frame]
                self._coalescer.mark(self)
                return
            if raw.writable():
                raw.write(frame)
                return
        self._enqueue(frame)

    def flush(self) -> None:
        """Write what this burst held, in one piece, or queue it behind back-pressure."""
        held, self._held = self._held, None
        if not held or self.overflowed or self._closed:
            return
        raw = self._raw
        if not self._frames and raw is not None and raw.writable():
            raw.write(held[0] if len(held) == 1 else b"".join(held))
        else:
            for frame in held:
                self._enqueue(frame)
                if self.overflowed:
                    return
        self._wake_paced()

    def _enqueue(self, frame: bytes) -> None:
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        if len(frames) >= self._limit:
            self.overflow()
            return
        frames.append(frame)
        if self._task is None:
            self._task = asyncio.create_task(self._drain(frames), name="ws-outbox")

    def _has_room(self) -> bool:
        waiting = len(self._frames or ()) + len(self._held or ())
        return waiting <= self._limit // 2

    def _wake_paced(self) -> None:
        if self._room is not None:
            self._room.set()

    async def push_paced(self, frame: bytes) -> None:
        """Push without overflowing: history replay waits for the socket instead."""
        while not self._has_room() and not self.overflowed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        self.push(frame)

    def overflow(self) -> None:
        """Stop queueing for good and have the owner disconnect the peer."""
        if not self.overflowed:
            self.overflowed = True
            self._held = None
            if self._frames is not None:
                self._frames.clear()  # the drain task holds this deque too
            self._frames = None
            self._wake_paced()
            self._on_overflow()

    async def _drain(self, frames: deque[bytes]) -> None:
        raw = self._raw
        try:
            while frames:
                if raw is not None:
                    await raw.wait_writable()
                    if not raw.open:
                        break  # the peer is gone or closing; nothing left to deliver
                    while frames and raw.writable():
                        raw.write(frames.popleft())
                else:
                    await self._websocket.send_text(frame_text(frames.popleft()))
                if self._has_room():
                    self._wake_paced()
        except (RuntimeError, OSError, WebSocketDisconnect) as exc:  # the socket closed under us
            log.debug("ws.outbox_stopped", error=repr(exc))
        finally:
            frames.clear()
            if self._frames is frames:
                self._frames = None
            self._task = None
            self._wake_paced()

    async def close(self) -> None:
        """The connection is ending: drop what a burst still holds (a flush after
        this would start a drain task for a socket nobody owns) and stop draining."""
        self._closed = True
        self._held = None
        await cancel_and_wait(self._task)


class Frames:
    """One message's payload and the frames built from it, one per operation id.

    Clients mostly number their operations alike ("1", "2", ...), so most members
    of a group share not only the payload but the whole frame.
    """

    __slots__ = ("payload", "_by_prefix")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self._by_prefix: dict[bytes, bytes] = {}

    def for_prefix(self, prefix: bytes) -> bytes:
        frame = self._by_prefix.get(prefix)
        if frame is None:
            frame = self._by_prefix[prefix] = text_frame(prefix + self.payload + b"}")
        return frame

    def for_stream(self, key: bytes, build: Callable[[bytes], bytes]) -> bytes:
        """The payload framed for an HTTP stream (``api.streaming``), once per ``key``:
        every SSE subscriber of a group in one mode gets the same bytes."""
        frame = self._by_prefix.get(key)
        if frame is None:
            frame = self._by_prefix[key] = build(self.payload)
        return frame


class FrameSink(Protocol):
    """Where a member's frames go: a WebSocket's :class:`Outbox`, or an HTTP
    stream's (``api.streaming.StreamOutbox``)."""

    def push(self, frame: bytes) -> None: ...

    async def push_paced(self, frame: bytes) -> None: ...

    def overflow(self) -> None: ...


@dataclass(eq=False, slots=True)
class Member:
    op_id: str
    outbox: FrameSink
    prefix: bytes  # b'{"id":<op>,"type":"next","payload":'
    pending: list[tuple[Item, Frames]] | None = None  # live messages held during replay
    replay: asyncio.Task[None] | None = None
    # Last position replayed. Live items at or below it in its epoch (a message in
    # flight while the replay read history, a reset of the group's that the replay
    # already went past) are skipped: a member's positions only move forward. Once a
    # live message passes, the member is in step with its group, whose positions are
    # monotonic too (``streams.hub``), and the check is off.
    floor: Position | None = None
    # The epoch a replay left for a new one (Redis lost the channel): a live message
    # of it still held in ``pending`` is older than everything the replay sent.
    left: str | None = None
    # Called when the multiplexer ends the member itself (its replay failed, its
    # group's feed ended), so the connection forgets the operation and the client
    # may subscribe again with the same id.
    on_end: Callable[[], None] | None = None

    def send(self, frames: Frames) -> None:
        self.outbox.push(frames.for_prefix(self.prefix))

    async def send_paced(self, payload: bytes) -> None:
        await self.outbox.push_paced(text_frame(self.prefix + payload + b"}"))

    def ended_frames(self, error: ApiError) -> list[bytes]:
        """What tells this member's client that the multiplexer ended it, and why."""
        return [text_frame(frame.encode()) for frame in error_frames(self.op_id, error)]

    def offer(self, item: Item, frames: Frames) -> bool:
        """Send a live item unless the replay already covered it."""
        if self.left is not None and item.position.epoch == self.left:
            return False
        floor = self.floor
        if floor is not None:
            position = item.position
            if position.epoch == floor.epoch and position.offset <= floor.offset:
                return False
            if isinstance(item, Envelope):
                self.floor = None
            else:
                self.floor = position
        self.send(frames)
        return True


@dataclass(eq=False)
class Group:
    key: tuple[Any, ...]
    plan: Plan
    context: Context
    members: set[Member] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    task: asyncio.Task[None] | None = None


class Multiplexer:
    def __init__(
        self,
        schema: GraphQLSchema,
        bus: Bus,
        metrics: Metrics,
        *,
        outbox_limit: int,
        raw_writes: bool = False,
    ) -> None:
        """``raw_writes``: the ``rawsocket`` fast path is on (``api/accel``)."""
        self.outbox_limit = outbox_limit
        self._raw_of: Callable[[WebSocket], RawSocket | None] | None = None
        if raw_writes:
            from api.rawsocket import RawSocket

            self._raw_of = RawSocket.of
        self._schema = schema
        self._bus = bus
        self._metrics = metrics
        self._groups: dict[tuple[Any, ...], Group] = {}
        self._lock = asyncio.Lock()
        self.coalescer = Coalescer()  # shared by every connection's outbox

    def raw_socket(self, websocket: WebSocket) -> RawSocket | None:
        """The transport to write ``websocket``'s frames to directly, if allowed."""
        return None if self._raw_of is None else self._raw_of(websocket)

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def encode(self, plan: Plan, context: Context, event: ChannelEvent) -> bytes:
        """Execute the selection on one event and encode the payload, once."""
        result = execute(
            self._schema,
            plan.document,
            root_value=event,
            context_value=context,
            variable_values=plan.variables,
            operation_name=plan.operation_name,
        )
        if asyncio.iscoroutine(result) or asyncio.isfuture(result):  # pragma: no cover
            raise RuntimeError("channel selections must resolve synchronously")
        payload: dict[str, Any] = {"data": result.data}  # type: ignore[union-attr]
        if result.errors:  # type: ignore[union-attr]
            payload["errors"] = [self._format(e) for e in result.errors]  # type: ignore[union-attr]
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()

    def _format(self, error: GraphQLError) -> dict[str, Any]:
        shown = masked(error)
        if shown is not error:
            log.error("graphql.masked_error", error=repr(error.original_error))
        return dict(shown.formatted)

    async def join(
        self, plan: Plan, context: Context, member: Member, since: Position | None
    ) -> None:
        """Add a member; with ``since``, replay history first, then go live.

        Only the group keeps a plan: :meth:`leave` takes the key, so a member's own
        plan (its copy of the document text and variables) need not outlive this.
        """
        key = plan.group_key(context)
        async with self._lock:
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = Group(key, plan, context)
                group.task = asyncio.create_task(self._pump(group), name=f"mux:{plan.channel}")
                self._metrics.mux_groups.set(len(self._groups))
            if since is not None:
                member.pending = []
            group.members.add(member)
            self._metrics.subscriptions.labels(kind="channel").inc()
        await group.ready.wait()
        if group.failed:  # its pump already told this member why and ended it
            return
        if since is not None:
            member.replay = asyncio.create_task(self._replay(group, member, since))

    async def leave(self, key: tuple[Any, ...], member: Member) -> None:
        if member.replay is not None:
            member.replay.cancel()
        async with self._lock:
            group = self._groups.get(key)
            if group is None or member not in group.members:
                return
            group.members.discard(member)
            self._metrics.subscriptions.labels(kind="channel").dec()
            if group.members:
                return
            del self._groups[key]
            self._metrics.mux_groups.set(len(self._groups))
        await cancel_and_wait(group.task)

    async def _pump(self, group: Group) -> None:
        plan = group.plan
        try:
            async with self._bus.subscribe(plan.channel, lambda: self._overflow(group)) as feed:
                group.ready.set()
                async for item in feed:
                    self._fan_out(group, item, burst=feed.backlog() > 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # End this group visibly: members get an error saying why, then
            # "complete" (clients resubscribe with since), joiners waiting for it are
            # released, and the next subscriber starts a fresh group instead of
            # joining a dead one.
            error: ApiError
            if isinstance(exc, HubClosed):
                log.info("mux.pump_stopped", channel=plan.channel)
                error = ShuttingDown(str(exc))
            elif isinstance(exc, ChannelUnavailable):
                log.warning("mux.pump_unavailable", channel=plan.channel)
                error = Unavailable(str(exc), retry_after=exc.retry_after)
            else:
                log.exception("mux.pump_failed", channel=plan.channel)
                error = Unavailable("channel feed failed; resume with since", retry_after=1)
            if self._groups.get(group.key) is group:
                del self._groups[group.key]
                self._metrics.mux_groups.set(len(self._groups))
            group.failed = True
            group.ready.set()
            for member in list(group.members):
                if member.replay is not None:
                    member.replay.cancel()
                self._tell_ended(member, error)
            self._metrics.subscriptions.labels(kind="channel").dec(len(group.members))
            group.members.clear()

    def _overflow(self, group: Group) -> None:
        # The group itself fell behind (the process is saturated): cut every member.
        for member in list(group.members):
            member.outbox.overflow()

    def _event(self, item: Item, channel: str) -> ChannelEvent:
        if isinstance(item, Reset):
            return ChannelEvent.reset(channel, item.position)
        return ChannelEvent.from_envelope(item)

    def _fan_out(self, group: Group, item: Item, *, burst: bool = False) -> None:
        """Send one message to every member; ``burst``: more are queued behind it."""
        frames = Frames(
            self.encode(group.plan, group.context, self._event(item, group.plan.channel))
        )
        live = 0
        coalescer = self.coalescer
        coalescer.holding = burst
        try:
            for member in group.members:
                if member.pending is not None:
                    member.pending.append((item, frames))
                    if len(member.pending) > self.outbox_limit:  # live outran the replay
                        member.outbox.overflow()
                elif member.offer(item, frames):
                    live += 1
        finally:
            coalescer.holding = False
        if isinstance(item, Envelope) and live:
            self._metrics.delivered.inc(live)
            if coalescer.pending:  # "written to sockets" is when the held frames are
                coalescer.after_flush(lambda: self._metrics.observe_latency(item, live))
            else:
                self._metrics.observe_latency(item, live)

    async def _replay(self, group: Group, member: Member, since: Position) -> None:
        try:
            await self._replay_then_go_live(group, member, since)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Without its replay the member would wait forever, and its held live
            # messages would grow until the whole connection was cut as slow: end
            # it visibly, with a code and a retry hint, and free what it holds.
            if isinstance(exc, ReplayUnavailable):
                log.warning("mux.replay_refused", channel=group.plan.channel, error=str(exc))
                error = Unavailable(str(exc), retry_after=exc.retry_after)
            else:
                log.exception("mux.replay_failed", channel=group.plan.channel)
                error = Unavailable("replay failed; resubscribe with since", retry_after=1)
            member.replay = None  # leave() must not cancel this task, it is ending
            member.pending = None
            await self.leave(group.key, member)
            self._tell_ended(member, error)

    def _tell_ended(self, member: Member, error: ApiError) -> None:
        for frame in member.ended_frames(error):
            member.outbox.push(frame)
        if member.on_end is not None:
            member.on_end()

    async def _replay_then_go_live(self, group: Group, member: Member, since: Position) -> None:
        plan = group.plan
        found = await self._bus.replays.recover(plan.channel, since)
        last: Position = since
        if found.reset is not None:
            last = found.reset
            if last.epoch != since.epoch:
                member.left = since.epoch
            reset = ChannelEvent.reset(plan.channel, last)
            await member.send_paced(self.encode(plan, group.context, reset))
        for envelope in found.envelopes:
            event = ChannelEvent.from_envelope(envelope)
            await member.send_paced(self.encode(plan, group.context, event))
            last = envelope.position
        member.floor = last
        pending, member.pending = member.pending or [], None
        for item, frames in pending:
            member.offer(item, frames)


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def _complete(op_id: str) -> str:
    return json.dumps({"id": op_id, "type": "complete"})


def error_frames(op_id: str, error: ApiError) -> tuple[str, str]:
    """What Strawberry sends when a subscription fails before its first event."""
    payload = {"data": None, "errors": [{"message": str(error), "extensions": error.extensions}]}
    nxt = json.dumps({"id": op_id, "type": "next", "payload": payload})
    return nxt, _complete(op_id)
