"""The Pusher Channels protocol (version 7) on ``/app/{key}``: pusher-js and Laravel
Echo connect unchanged, onto the same channels, ACL, history and presence as
GraphQL.

One connection:

* ``pusher:connection_established`` with a ``socket_id`` and ``activity_timeout``;
  ``pusher:ping``/``pusher:pong`` both ways; a socket silent for the timeout plus
  30 s is closed with 4201.
* ``pusher:subscribe``: names map onto the grammar by ``streams.pusher_names``.
  ``private-``/``presence-`` need the signature ``/pusher/auth`` gives (it applies
  ``streams.acl``, the one permission model); a public name needs ``pusher:signin``
  first and the ACL's yes. Beyond Pusher: ``since`` (``{"offset", "epoch"}``) or
  ``"positions": true`` in the subscribe data switch that subscription to
  *positioned* events (data ``{"data", "offset", "epoch"}``), and ``since`` replays
  what was missed first; ``cache-`` channels send their last message on subscribe.
* ``client-*`` events on private and presence channels, from a known user (presence
  member or signed in), at most ``EDUMATRIX_RATE_LIMIT_PUSHER_CLIENT_EVENTS``; they
  go through the bus like every message (history, offsets, other processes, GraphQL
  subscribers), to every subscriber but the sender.
* Every end says why: ``pusher:error`` with Pusher's code, then the close with that
  code (4001 no such app, 4009 unauthorized, 4100 over capacity or too slow, 4200
  server going away: reconnect now, 4201 silent too long).

Fan-out is multiplexed: each process subscribes to a channel's bus feed once for
all its Pusher sockets, encodes each message once per frame shape, and writes the
same bytes to every member's bounded :class:`api.multiplex.Outbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client import Gauge
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.http.websocket_origin import is_same_origin, normalize_origin

from api.admission import FLOODED, Admission, parse_rate
from api.clientinfo import client_ip, user_agent
from api.frames import text_frame
from api.multiplex import Outbox, cancel_and_wait
from api.pusher_apps import Apps, PusherApp, channel_auth, same, user_auth
from api.pusher_webhooks import Webhooks, parse_webhooks
from api.settings import Settings
from db.repo import Actor, AuditOutcome
from schema.context import Services
from streams.acl import Action, Role, Viewer, is_allowed, presence_key
from streams.channels import ChannelError
from streams.envelope import Envelope, Position
from streams.hub import ChannelUnavailable, HubClosed, Item, Reset
from streams.presence import EventType, Member, Resync, Snapshot
from streams.pusher_names import Access, PusherChannel, from_pusher
from streams.pusher_occupancy import MemoryOccupancy, Occupancy, RedisOccupancy
from streams.redis_client import REDIS_DOWN, AnyRedis, resilient_client
from streams.replay import ReplayUnavailable

log = structlog.get_logger(__name__)

PROTOCOL = 7
OLDEST_PROTOCOL = 5
PONG_GRACE_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 5.0

# Pusher's close codes (4000-4099: do not reconnect; 4100-4199: reconnect with
# backoff; 4200-4299: reconnect now).
APP_DOES_NOT_EXIST = 4001
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT_NOW = 4200
PONG_NOT_RECEIVED = 4201
CLIENT_EVENT_RATE = 4301

RESET_EVENT = "edumatrix:reset"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _frame(obj: dict[str, Any]) -> bytes:
    return text_frame(_dumps(obj).encode())


def pusher_payload(envelope: Envelope) -> tuple[str, str | None, str | None]:
    """(data string, socket to skip, user id) of an envelope as Pusher delivers it.

    Events that came in through Pusher (HTTP API, client events) keep the data
    string exactly as given; every other message's data is its JSON.
    """
    data = envelope.data
    if data.get("source") == "pusher" and isinstance(data.get("pusherData"), str):
        skip = data.get("socketId")
        user = data.get("userId")
        return (
            data["pusherData"],
            skip if isinstance(skip, str) else None,
            user if isinstance(user, str) else None,
        )
    return _dumps(data), None, None


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class EventFrames:
    """One message's frames for one Pusher channel, built on first use: *plain*
    (Pusher's own shape) and *positioned* (data with the offset and epoch)."""

    __slots__ = ("item", "channel", "skip", "_plain", "_positioned")

    def __init__(self, item: Item, channel: str) -> None:
        self.item = item
        self.channel = channel
        self.skip: str | None = None
        self._plain: bytes | None = None
        self._positioned: bytes | None = None
        if isinstance(item, Envelope) and item.data.get("source") == "pusher":
            skip = item.data.get("socketId")  # the one socket not to send it to
            self.skip = skip if isinstance(skip, str) else None

    def plain(self) -> bytes:
        if self._plain is None:
            item = self.item
            if isinstance(item, Reset):
                self._plain = self.positioned()
            else:
                data, _, user = pusher_payload(item)
                obj = {"event": item.kind, "channel": self.channel, "data": data}
                if user is not None:
                    obj["user_id"] = user
                self._plain = _frame(obj)
        return self._plain

    def positioned(self) -> bytes:
        if self._positioned is None:
            item = self.item
            position = item.position
            if isinstance(item, Reset):
                body = {"offset": position.offset, "epoch": position.epoch, "recovered": False}
                obj = {"event": RESET_EVENT, "channel": self.channel, "data": _dumps(body)}
            else:
                data, _, user = pusher_payload(item)
                body = {"data": _decoded(data), "offset": position.offset, "epoch": position.epoch}
                obj = {"event": item.kind, "channel": self.channel, "data": _dumps(body)}
                if user is not None:
                    obj["user_id"] = user
            self._positioned = _frame(obj)
        return self._positioned


@dataclass(eq=False, slots=True)
class Subscriber:
    """One socket's subscription to one channel in a :class:`Group`."""

    socket: PusherSocket
    positioned: bool
    pending: list[EventFrames] | None = field(default_factory=list)  # until subscribed
    floor: Position | None = None  # positions at or below it were sent already
    left: str | None = None  # the epoch a replay left for a new one: never go back

    def offer(self, frames: EventFrames) -> bool:
        if frames.skip is not None and frames.skip == self.socket.socket_id:
            return False
        if self.left is not None and frames.item.position.epoch == self.left:
            return False
        floor = self.floor
        if floor is not None:
            position = frames.item.position
            if position.epoch == floor.epoch and position.offset <= floor.offset:
                return False
            self.floor = None if isinstance(frames.item, Envelope) else position
        self.socket.outbox.push(frames.positioned() if self.positioned else frames.plain())
        return True


@dataclass(eq=False)
class Group:
    """Every Pusher subscriber of one Pusher channel name in this process."""

    name: str
    channel: str
    members: set[Subscriber] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: BaseException | None = None
    task: asyncio.Task[None] | None = None


class PusherFanout:
    """One bus feed per Pusher channel name for every socket of this process."""

    def __init__(self, services: Services, limit: int) -> None:
        self._services = services
        self._limit = limit
        self._groups: dict[str, Group] = {}
        self._lock = asyncio.Lock()

    async def join(self, name: str, channel: str, member: Subscriber) -> None:
        """Add ``member`` (pending: holds live messages until :meth:`go_live`)."""
        async with self._lock:
            group = self._groups.get(name)
            if group is None:
                group = self._groups[name] = Group(name, channel)
                group.task = asyncio.create_task(self._pump(group), name=f"pusher:{name}")
            group.members.add(member)
            self._services.metrics.subscriptions.labels(kind="pusher").inc()
        await group.ready.wait()
        if group.failed is not None:
            await self.leave(name, member)
            raise group.failed

    async def leave(self, name: str, member: Subscriber) -> None:
        async with self._lock:
            group = self._groups.get(name)
            if group is None or member not in group.members:
                return
            group.members.discard(member)
            self._services.metrics.subscriptions.labels(kind="pusher").dec()
            if group.members:
                return
            del self._groups[name]
        await cancel_and_wait(group.task)

    def go_live(self, member: Subscriber) -> None:
        """Send what arrived while ``member`` was being subscribed, then live ones."""
        pending, member.pending = member.pending or [], None
        for frames in pending:
            member.offer(frames)

    async def _pump(self, group: Group) -> None:
        metrics = self._services.metrics
        try:
            async with self._services.bus.subscribe(
                group.channel, lambda: self._cut(group)
            ) as feed:
                group.ready.set()
                async for item in feed:
                    self._fan_out(group, item, burst=feed.backlog() > 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # End the group visibly: each socket is told and closed with a reconnect
            # code (clients with ``since`` resume), waiting joiners are released.
            log.warning("pusher.feed_failed", channel=group.channel, error=repr(exc))
            if self._groups.get(group.name) is group:
                del self._groups[group.name]
            group.failed = exc
            group.ready.set()
            for member in list(group.members):
                member.socket.end(RECONNECT_NOW, _feed_error(exc))
            metrics.subscriptions.labels(kind="pusher").dec(len(group.members))
            group.members.clear()

    def _fan_out(self, group: Group, item: Item, *, burst: bool) -> None:
        """One message to every member, encoded once per frame shape; during a burst
        each socket's frames are held and written together (``Coalescer``), as the
        GraphQL multiplexer does."""
        frames = EventFrames(item, group.name)
        metrics = self._services.metrics
        coalescer = self._services.mux.coalescer
        live = 0
        coalescer.holding = burst
        try:
            # Nothing here adds or removes members (an overflow only asks the socket
            # to end), so the set is walked as it is, not copied per message.
            for member in group.members:
                pending = member.pending
                if pending is not None:
                    pending.append(frames)
                    if len(pending) > self._limit:
                        member.socket.outbox.overflow()
                elif member.offer(frames):
                    live += 1
        finally:
            coalescer.holding = False
        if isinstance(item, Envelope) and live:
            metrics.delivered.inc(live)
            if coalescer.pending:  # "written to sockets" is when the held frames are
                coalescer.after_flush(lambda: metrics.observe_latency(item, live))
            else:
                metrics.observe_latency(item, live)

    def _cut(self, group: Group) -> None:
        for member in list(group.members):
            member.socket.outbox.overflow()


def _feed_error(exc: BaseException) -> str:
    if isinstance(exc, HubClosed):
        return "server shutting down; reconnect"
    if isinstance(exc, ChannelUnavailable | ReplayUnavailable):
        return f"channel unavailable ({exc}); reconnect"
    return "channel feed failed; reconnect"


@dataclass(frozen=True, slots=True)
class SignedUser:
    """Who signed in with ``pusher:signin``: the claims ``/pusher/user-auth`` signed."""

    viewer: Viewer
    user_data: str


def viewer_from_user_data(user_data: str) -> tuple[Viewer, float | None]:
    """The viewer ``/pusher/user-auth`` put into ``user_data`` (signed, so trusted),
    and when its token stops being accepted (None: never)."""
    obj = json.loads(user_data)
    info = obj.get("user_info") or {}
    exp = info.get("exp")
    viewer = Viewer(
        user_id=str(obj["id"]),
        role=Role(info["role"]),
        institution=str(info["institution"]),
        departments=frozenset(info.get("departments") or ()),
        classrooms=frozenset(info.get("classrooms") or ()),
    )
    return viewer, None if exp is None else float(exp)


class SubscribeError(Exception):
    def __init__(self, kind: str, message: str, status: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(eq=False)
class Subscription:
    channel: PusherChannel
    member: Subscriber
    task: asyncio.Task[None] | None = None
    user_id: str | None = None  # the presence member this socket is, on presence channels


class PusherSocket:
    """One Pusher connection: its outbox, its subscriptions, its way to end."""

    def __init__(
        self, endpoint: PusherEndpoint, websocket: WebSocket, app: PusherApp, services: Services
    ) -> None:
        self.endpoint = endpoint
        self.websocket = websocket
        self.app = app
        self.services = services
        self.socket_id = f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"
        mux = services.mux
        self.outbox = Outbox(
            websocket,
            endpoint.settings.subscriber_queue_size,
            self._overflowed,
            mux.coalescer,
            mux.raw_socket(websocket),
        )
        self.subscriptions: dict[str, Subscription] = {}
        self.user: SignedUser | None = None
        self.ending: tuple[int, str] | None = None
        self._wake = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self._client_key = f"pusher-client:{next(endpoint.ids)}"
        ip = client_ip(websocket.scope, services.trusted_proxies)
        self.actor = Actor(ip=ip, user_agent=user_agent(websocket.scope))

    # -- sending -------------------------------------------------------------------

    def send(self, event: str, data: Any, channel: str | None = None) -> None:
        obj: dict[str, Any] = {"event": event}
        if channel is not None:
            obj["channel"] = channel
        obj["data"] = data
        self.outbox.push(_frame(obj))

    def error(self, code: int | None, message: str) -> None:
        self.send("pusher:error", {"code": code, "message": message})

    def end(self, code: int, reason: str) -> None:
        """End the connection: ``pusher:error`` with the code, then the close."""
        if self.ending is None:
            self.ending = (code, reason)
            self._wake.set()

    def _overflowed(self) -> None:
        self.services.metrics.slow_subscribers.inc()
        self.end(OVER_CAPACITY, "slow consumer: too many messages waiting; reconnect")

    # -- the connection ------------------------------------------------------------

    async def run(self) -> None:
        settings = self.endpoint.settings
        self.send(
            "pusher:connection_established",
            _dumps(
                {
                    "socket_id": self.socket_id,
                    "activity_timeout": settings.pusher_activity_timeout_seconds,
                }
            ),
        )
        receiving = asyncio.create_task(self._receive_loop())
        ending = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({receiving, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            ending.cancel()
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiving
            await self._close_all()
        if self.ending is not None:
            code, reason = self.ending
            await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        ws = self.websocket
        if ws.application_state is not WebSocketState.CONNECTED:
            return
        error = {"event": "pusher:error", "data": {"code": code, "message": reason}}
        self.outbox.push(_frame(error))
        await self.outbox.drained(CLOSE_TIMEOUT_SECONDS)
        await self.outbox.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await ws.close(code=code, reason=reason[:120])
        except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect) as exc:
            log.info("pusher.close_incomplete", code=code, error=repr(exc))

    async def _receive_loop(self) -> None:
        settings = self.endpoint.settings
        idle = settings.pusher_activity_timeout_seconds + PONG_GRACE_SECONDS
        ws = self.websocket
        while self.ending is None:
            try:
                async with asyncio.timeout(idle):
                    message = await ws.receive()
            except TimeoutError:
                self.end(PONG_NOT_RECEIVED, "no message or pong within the activity timeout")
                return
            if message["type"] == "websocket.disconnect":
                if ws.scope.get(FLOODED):
                    self.end(OVER_CAPACITY, "flood: too many messages; slow down")
                    return
                return  # the client left
            text = message.get("text")
            if text is None:
                self.error(None, "binary frames are not part of the Pusher protocol")
                continue
            if len(text) > settings.pusher_max_event_bytes + 1024:
                self.error(None, f"message larger than {settings.pusher_max_event_bytes} bytes")
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                self.error(None, "message is not JSON")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
                self.error(None, "message must be an object with an event name")
                continue
            await self._handle(obj["event"], obj.get("data"), obj.get("channel"))

    async def _handle(self, event: str, data: Any, channel: Any) -> None:
        if isinstance(data, str) and event.startswith("pusher:"):
            data = _decoded(data)  # some clients send data as a JSON string
        if event == "pusher:ping":
            self.send("pusher:pong", "{}")
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            self._subscribe(data if isinstance(data, dict) else {})
        elif event == "pusher:unsubscribe":
            name = data.get("channel") if isinstance(data, dict) else None
            if isinstance(name, str):
                await self._unsubscribe(name)
        elif event == "pusher:signin":
            self._signin(data if isinstance(data, dict) else {})
        elif event.startswith("client-"):
            await self._client_event(event, data, channel)
        else:
            self.error(None, f"unknown event {event[:64]!r}")

    # -- signin --------------------------------------------------------------------

    def _signin(self, data: dict[str, Any]) -> None:
        user_data = data.get("user_data")
        if not isinstance(user_data, str) or not same(
            data.get("auth"), user_auth(self.app, self.socket_id, user_data)
        ):
            self.endpoint.audit(self, "pusher.signin", None, "denied", {"reason": "bad signature"})
            self.end(UNAUTHORIZED, "invalid signin: the signature does not match this socket")
            return
        try:
            viewer, deadline = viewer_from_user_data(user_data)
        except (ValueError, KeyError, TypeError):
            self.end(
                UNAUTHORIZED, "invalid signin: user_data lacks the claims /pusher/user-auth signs"
            )
            return
        if viewer.institution != self.app.institution:
            self.end(UNAUTHORIZED, "invalid signin: another institution's user")
            return
        if deadline is not None:
            delay = deadline - time.time()
            if delay <= 0:
                self.end(UNAUTHORIZED, "sign-in expired: sign in again with a fresh token")
                return
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = asyncio.get_running_loop().call_later(
                delay, self.end, UNAUTHORIZED, "sign-in expired: sign in again with a fresh token"
            )
        self.user = SignedUser(viewer, user_data)
        self.send("pusher:signin_success", {"user_data": user_data})

    # -- subscriptions -------------------------------------------------------------

    def _subscribe(self, data: dict[str, Any]) -> None:
        name = data.get("channel")
        if not isinstance(name, str):
            self.error(None, "pusher:subscribe needs a channel")
            return
        if name in self.subscriptions:
            return  # already subscribed (or subscribing): Pusher ignores repeats
        if len(self.subscriptions) >= self.endpoint.settings.max_subscriptions_per_connection:
            self._refused(
                name,
                SubscribeError("LimitReached", "too many subscriptions on this connection", 429),
            )
            return
        try:
            parsed = from_pusher(name)
            since = _since(data)
            positioned = since is not None or data.get("positions") is True
            user_id = self._check(parsed, data)
        except SubscribeError as exc:
            self._refused(name, exc)
            return
        except ChannelError as exc:
            self._refused(name, SubscribeError("InvalidChannel", str(exc), 400))
            return
        sub = Subscription(parsed, Subscriber(self, positioned), user_id=user_id)
        self.subscriptions[name] = sub
        sub.task = asyncio.create_task(
            self._run_subscription(sub, data, since), name=f"pusher-sub:{name}"
        )

    def _refused(self, name: str, exc: SubscribeError) -> None:
        self.send(
            "pusher:subscription_error",
            {"type": exc.kind, "error": str(exc), "status": exc.status},
            channel=name,
        )

    def _check(self, parsed: PusherChannel, data: dict[str, Any]) -> str | None:
        """Raise SubscribeError unless this socket may subscribe; the presence user id."""
        name = parsed.pusher_name
        if parsed.access is Access.SERVER_TO_USER:
            if self.user is None or self.user.viewer.user_id != parsed.channel.key:
                raise SubscribeError("AuthError", f"{name!r} is the signed-in user's own", 403)
            return None
        if parsed.access is Access.PUBLIC:
            user = self.user
            if user is None:
                raise SubscribeError(
                    "AuthError",
                    f"{name!r} is a public name: sign in first (pusher:signin) or "
                    f"subscribe to private-{name}",
                    401,
                )
            if not is_allowed(user.viewer, parsed.channel, Action.SUBSCRIBE):
                self.endpoint.audit(self, "pusher.subscribe", parsed.channel.name, "denied", {})
                raise SubscribeError("AuthError", f"not allowed to subscribe to {name!r}", 403)
            return None
        channel_data = data.get("channel_data") if parsed.access is Access.PRESENCE else None
        if parsed.access is Access.PRESENCE and not isinstance(channel_data, str):
            raise SubscribeError("AuthError", "presence channels need channel_data", 401)
        expected = channel_auth(self.app, self.socket_id, name, channel_data)
        if not same(data.get("auth"), expected):
            self.endpoint.audit(
                self, "pusher.subscribe", parsed.channel.name, "denied", {"reason": "bad signature"}
            )
            raise SubscribeError(
                "AuthError", f"invalid signature for {name!r} on this socket: ask /pusher/auth", 401
            )
        if parsed.channel.institution not in (None, self.app.institution):
            raise SubscribeError("AuthError", f"{name!r} belongs to another institution", 403)
        if channel_data is None:
            return None
        try:
            member = json.loads(channel_data)
            return str(member["user_id"])
        except (ValueError, KeyError, TypeError):
            raise SubscribeError("AuthError", "channel_data must carry a user_id", 401) from None

    async def _run_subscription(
        self, sub: Subscription, data: dict[str, Any], since: Position | None
    ) -> None:
        name = sub.channel.pusher_name
        fanout = self.endpoint.fanout(self.services)
        try:
            await fanout.join(name, sub.channel.channel.name, sub.member)
        except Exception as exc:
            self.subscriptions.pop(name, None)
            self._refused(name, SubscribeError("ServiceUnavailable", _feed_error(exc), 503))
            return
        await self.endpoint.occupy(self.app, name, +1)
        try:
            if sub.channel.access is Access.PRESENCE:
                await self._present(sub, data, fanout, since)
            else:
                await self._start(sub, fanout, "{}", since)
                await asyncio.Event().wait()  # live until unsubscribed or closed
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # This channel's subscription ends, visibly, and the socket stays: the
            # client may subscribe again (with ``since``, nothing is lost).
            log.warning("pusher.subscription_failed", channel=name, error=repr(exc))
            if self.subscriptions.get(name) is sub:
                del self.subscriptions[name]
            self._refused(name, SubscribeError("ServiceUnavailable", _feed_error(exc), 503))
        finally:
            await fanout.leave(name, sub.member)
            await asyncio.shield(self.endpoint.occupy(self.app, name, -1))

    async def _start(
        self, sub: Subscription, fanout: PusherFanout, succeeded: str, since: Position | None
    ) -> None:
        """Subscribed: say so, send the cache's last message or what ``since`` missed,
        then the live messages held meanwhile."""
        name = sub.channel.pusher_name
        channel = sub.channel.channel.name
        member = sub.member
        self.send("pusher_internal:subscription_succeeded", succeeded, channel=name)
        bus = self.services.bus
        if since is not None:
            found = await bus.replays.recover(channel, since)
            last = since
            if found.reset is not None:
                last = found.reset
                if last.epoch != since.epoch:
                    member.left = since.epoch
                await self.outbox.push_paced(EventFrames(Reset(last), name).positioned())
            for envelope in found.envelopes:
                frames = EventFrames(envelope, name)
                if frames.skip != self.socket_id:
                    await self.outbox.push_paced(frames.positioned())
                last = envelope.position
            member.floor = last
        elif sub.channel.cache:
            position = await bus.position(channel)
            found_last = None
            if position.offset > 0:
                tail = await bus.read_since(channel, Position(position.offset - 1, position.epoch))
                found_last = tail[-1] if tail else None
            if found_last is None:
                self.send("pusher:cache_miss", "{}", channel=name)
            else:
                frames = EventFrames(found_last, name)
                self.outbox.push(frames.positioned() if member.positioned else frames.plain())
                member.floor = found_last.position
        fanout.go_live(member)

    async def _present(
        self, sub: Subscription, data: dict[str, Any], fanout: PusherFanout, since: Position | None
    ) -> None:
        info = json.loads(str(data["channel_data"])).get("user_info") or {}
        viewer = Viewer(
            user_id=str(sub.user_id),
            role=Role(info.get("role", "student")),
            institution=str(info.get("institution") or self.app.institution),
        )
        member = Member(
            user_id=viewer.user_id,
            display_name=str(info.get("displayName") or viewer.user_id),
            role=viewer.role.value,
        )
        presence = self.services.presence
        key = presence_key(sub.channel.channel, viewer)
        name = sub.channel.pusher_name
        async with presence.attend(key, viewer.institution, member) as attendance:
            known = {m.user_id: m for m in attendance.snapshot.members}
            await self._start(
                sub, fanout, _dumps({"presence": _presence_body(attendance.snapshot)}), since
            )
            async for item in attendance.events:
                if isinstance(item, Resync):
                    snapshot = await presence.snapshot(key)
                    attendance.events.after(snapshot.version)
                    now = {m.user_id: m for m in snapshot.members}
                    for user_id in known.keys() - now.keys():
                        self.send(
                            "pusher_internal:member_removed",
                            _dumps({"user_id": user_id}),
                            channel=name,
                        )
                    for user_id in now.keys() - known.keys():
                        self.send(
                            "pusher_internal:member_added", _member_body(now[user_id]), channel=name
                        )
                    known = now
                elif item.type is EventType.JOIN and item.member.user_id not in known:
                    known[item.member.user_id] = item.member
                    self.send(
                        "pusher_internal:member_added", _member_body(item.member), channel=name
                    )
                elif item.type is EventType.LEAVE and item.member.user_id in known:
                    del known[item.member.user_id]
                    self.send(
                        "pusher_internal:member_removed",
                        _dumps({"user_id": item.member.user_id}),
                        channel=name,
                    )

    async def _unsubscribe(self, name: str) -> None:
        sub = self.subscriptions.pop(name, None)
        if sub is not None:
            await cancel_and_wait(sub.task)

    async def _close_all(self) -> None:
        subs, self.subscriptions = list(self.subscriptions.values()), {}
        for sub in subs:
            if sub.task is not None:
                sub.task.cancel()
        for sub in subs:
            await cancel_and_wait(sub.task)

    # -- client events -------------------------------------------------------------

    async def _client_event(self, event: str, data: Any, name: Any) -> None:
        settings = self.endpoint.settings
        sub = self.subscriptions.get(name) if isinstance(name, str) else None
        if sub is None or sub.member.pending is not None:
            self.error(None, f"client event {event[:64]!r}: not subscribed to {str(name)[:200]!r}")
            return
        if sub.channel.access not in (Access.PRIVATE, Access.PRESENCE):
            self.error(None, "client events are for private and presence channels only")
            return
        user_id = sub.user_id or (self.user.viewer.user_id if self.user else None)
        if user_id is None:
            self.error(
                None, "client events need a known user: a presence channel, or pusher:signin"
            )
            return
        if len(event) > 200:
            self.error(None, "event name longer than 200 characters")
            return
        text = data if isinstance(data, str) else _dumps(data)
        if len(text.encode()) > settings.pusher_max_event_bytes:
            self.error(
                None, f"client event data larger than {settings.pusher_max_event_bytes} bytes"
            )
            return
        if not await self.endpoint.client_event_allowed(self._client_key):
            self.error(CLIENT_EVENT_RATE, "client event rejected: over the rate limit")
            return
        body = {
            "source": "pusher",
            "pusherData": text,
            "socketId": self.socket_id,
            "userId": user_id,
        }
        try:
            await self.services.bus.publish(sub.channel.channel.name, event, body)
        except Exception as exc:  # the bus is down: the sender must know it was not sent
            log.warning("pusher.client_event_failed", error=repr(exc))
            self.error(None, "client event not delivered: the bus is unavailable; retry")


def _since(data: dict[str, Any]) -> Position | None:
    since = data.get("since")
    if since is None:
        return None
    if (
        not isinstance(since, dict)
        or not isinstance(since.get("offset"), int)
        or not isinstance(since.get("epoch"), str)
        or since["offset"] < 0
    ):
        raise SubscribeError(
            "InvalidSince", 'since must be {"offset": int >= 0, "epoch": str}', 400
        )
    return Position(since["offset"], since["epoch"])


def _member_body(member: Member) -> str:
    return _dumps({"user_id": member.user_id, "user_info": _user_info(member)})


def _user_info(member: Member) -> dict[str, Any]:
    return {"displayName": member.display_name, "role": member.role, "status": member.status.value}


def _presence_body(snapshot: Snapshot) -> dict[str, Any]:
    members = {m.user_id: _user_info(m) for m in snapshot.members}
    return {"ids": list(members), "hash": members, "count": len(members)}


class PusherEndpoint:
    """The ASGI app on ``/app/{key}``; one per server process (``create_app``)."""

    def __init__(self, settings: Settings, apps: Apps, admission: Admission) -> None:
        self.settings = settings
        self.apps = apps
        self.admission = admission
        self.ids = itertools.count()
        self._origins = frozenset(
            o for o in (normalize_origin(x) for x in settings.allowed_origins) if o
        )
        self._any_origin = "*" in settings.allowed_origins
        self._fanout: PusherFanout | None = None
        self._sockets: set[PusherSocket] = set()
        self._client_rate: RateLimitItem | None = parse_rate(
            settings.rate_limit_pusher_client_events
        )
        self._client_limiter = FixedWindowRateLimiter(MemoryStorage())
        self._gauge: Gauge | None = None
        self._redis: AnyRedis | None = None
        self.occupancy: Occupancy = MemoryOccupancy(lambda *_: None)  # until start()
        self.webhooks: Webhooks
        self.draining = False

    async def start(self, services: Services) -> None:
        """Occupancy (memory, or Redis shared by the processes) and webhooks."""
        registry = services.metrics.registry
        self.webhooks = Webhooks(
            self.apps, parse_webhooks(self.settings.pusher_webhooks, self.apps), registry
        )
        on_change = self.webhooks.occupancy_changed
        if self.settings.redis_url:
            self._redis = resilient_client(self.settings.redis_url, decode_responses=False)
            self.occupancy = RedisOccupancy(
                self._redis,
                prefix=self.settings.redis_prefix,
                timeout_seconds=self.settings.presence_timeout_seconds,
                on_change=on_change,
            )
        else:
            self.occupancy = MemoryOccupancy(on_change)
        await self.occupancy.start()
        await self.webhooks.start(self.occupancy)
        if self.webhooks.enabled:
            services.presence.listen(self.webhooks.presence_changed)

    async def close(self) -> None:
        await self.occupancy.close()
        await self.webhooks.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def occupy(self, app: PusherApp, name: str, delta: int) -> None:
        """Count a subscription in or out; a Redis hiccup must not fail it."""
        try:
            if delta > 0:
                await self.occupancy.add(app.app_id, name)
            else:
                await self.occupancy.remove(app.app_id, name)
        except REDIS_DOWN as exc:
            log.warning("pusher.occupancy_failed", channel=name, error=repr(exc))

    def fanout(self, services: Services) -> PusherFanout:
        if self._fanout is None:
            self._fanout = PusherFanout(services, self.settings.subscriber_queue_size)
        return self._fanout

    def drain(self) -> int:
        """Tell every Pusher socket to reconnect now (to another process) and close it."""
        self.draining = True
        sockets = list(self._sockets)
        for socket in sockets:
            socket.end(RECONNECT_NOW, "server shutting down; reconnect")
        return len(sockets)

    async def client_event_allowed(self, key: str) -> bool:
        item = self._client_rate
        return item is None or await self._client_limiter.hit(item, key)

    def audit(
        self,
        socket: PusherSocket,
        action: str,
        target: str | None,
        outcome: AuditOutcome,
        detail: dict[str, Any],
    ) -> None:
        user = socket.user.viewer if socket.user else None
        actor = socket.actor
        if user is not None:
            actor = Actor(
                user.user_id, user.role.value, user.institution, actor.ip, actor.user_agent
            )
        socket.services.audit.record_later(
            actor, action, target, outcome, {"socketId": socket.socket_id, **detail}
        )

    def _origin_allowed(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin")
        if origin is None or self._any_origin:
            return True
        if websocket.headers.get("sec-fetch-site") == "same-origin":
            return True
        if is_same_origin(origin, websocket.headers.get("host")):
            return True
        return normalize_origin(origin) in self._origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, self.admission.counted_receive(scope, receive), send)
        services: Services = scope["state"]["services"]
        if not self._origin_allowed(websocket):
            await websocket.close(code=1008)  # before accepting: the handshake is refused
            return
        await websocket.accept()
        app = self.apps.by_key(str(scope.get("path_params", {}).get("key", "")))
        refusal = self._refusal(websocket, app)
        if refusal is not None:
            code, reason = refusal
            await websocket.send_text(
                _dumps({"event": "pusher:error", "data": {"code": code, "message": reason}})
            )
            await websocket.close(code=code, reason=reason)
            return
        assert app is not None
        ip = client_ip(scope, services.trusted_proxies)
        if not self.admission.open_ip(ip):
            reason = "over capacity: too many connections from your address"
            await websocket.send_text(
                _dumps(
                    {"event": "pusher:error", "data": {"code": OVER_CAPACITY, "message": reason}}
                )
            )
            await websocket.close(code=OVER_CAPACITY, reason=reason)
            return
        socket = PusherSocket(self, websocket, app, services)
        self._sockets.add(socket)
        gauge = self._connections_gauge(services)
        gauge.inc()
        try:
            await socket.run()
        finally:
            gauge.dec()
            self._sockets.discard(socket)
            self.admission.close_ip(ip)
            await socket.outbox.close()

    def _refusal(self, websocket: WebSocket, app: PusherApp | None) -> tuple[int, str] | None:
        if app is None:
            return (
                APP_DOES_NOT_EXIST,
                "app does not exist (check the key and EDUMATRIX_PUSHER_APPS)",
            )
        if self.draining:
            return RECONNECT_NOW, "server shutting down; reconnect"
        version = websocket.query_params.get("protocol")
        if version is None:
            return NO_PROTOCOL, "no protocol version supplied"
        if not version.isdigit() or not OLDEST_PROTOCOL <= int(version) <= PROTOCOL:
            return UNSUPPORTED_PROTOCOL, f"unsupported protocol version {version[:8]!r} (5 to 7)"
        return None

    def _connections_gauge(self, services: Services) -> Gauge:
        if self._gauge is None:
            self._gauge = Gauge(
                "edumatrix_pusher_connections",
                "Open Pusher-protocol WebSocket connections",
                registry=services.metrics.registry,
            )
        return self._gauge
