"""Operations over plain HTTP responses that stay open: Server-Sent Events (the
graphql-sse protocol, both modes) and ``multipart/mixed`` (Apollo Client's HTTP
subscriptions).

Why: serverless functions, proxies that strip WebSocket upgrades and many mobile
stacks can only hold an HTTP response open. Strawberry ships both encodings, but its
streams answer to nothing else: a stream held no connection slot, did not count
against the subscription limit, outlived its token, and held uvicorn's shutdown
open until the client left. Here every stream is one connection to admission
(slots per IP and per subject, operations per subject), ends at its token's
deadline, and ends on shutdown, always with a reason the client can read: a
``next`` whose error has a code (``UNAUTHENTICATED``, ``SHUTTING_DOWN``,
``SLOW_CONSUMER``), then ``complete``. Execution is Strawberry's own
(``Schema.stream``): the same extensions, limits, masking and resolvers as every
other path; results are encoded by Strawberry's transports.

graphql-sse (see its PROTOCOL.md):

- distinct connections mode: ``POST`` (or ``GET``) with ``Accept:
  text/event-stream``; the response is that one operation's ``next`` events, then
  ``complete``.
- single connection mode: ``PUT`` reserves a stream (201, the reservation token in
  the body; authentication required, the reservation belongs to its subject);
  ``GET`` with the token (``X-GraphQL-Event-Stream-Token`` header or ``?token=``)
  opens it; ``POST`` with the token and ``extensions.operationId`` starts an
  operation (202) whose events arrive on the stream tagged with its id; ``DELETE
  ?operationId=`` stops one. A reservation nobody opens within
  ``EDUMATRIX_STREAM_RESERVATION_SECONDS`` is dropped; when the stream closes its operations stop.

Multipart: ``POST`` with ``Accept: multipart/mixed;subscriptionSpec="1.0"``, parts
``{"payload": <result>}``, a heartbeat part ``{}`` every few seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import structlog
from graphql import GraphQLError, GraphQLFormattedError, OperationType
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport
from strawberry.types.execution import ExecutionResult
from strawberry.types.graphql import OperationType as StrawberryOperationType

from api.admission import TOO_MANY_CONNECTIONS
from api.auditing import limit_hit
from api.encoding import COMPACT_JSON
from api.multiplex import Frames, Member
from api.plan import Plan
from resolvers.access import authorize
from resolvers.emit import emit
from schema.context import Context
from schema.errors import ApiError, RateLimited, masked
from streams.acl import Action, Viewer
from streams.envelope import Position

if TYPE_CHECKING:
    from api.graphql import GraphQLView

log = structlog.get_logger(__name__)

TOKEN_HEADER = b"x-graphql-event-stream-token"
EVENT_STREAM = "text/event-stream"
STREAM_QUEUE = 1000  # events a single-connection stream may hold for a slow reader

_SSE = SSETransport()
_MULTIPART = MultipartSubscriptionTransport()
_ALL_TYPES = (
    StrawberryOperationType.QUERY,
    StrawberryOperationType.MUTATION,
    StrawberryOperationType.SUBSCRIPTION,
)


def wants(scope: Scope) -> bool:
    """Whether this HTTP request is one of ours (checked before Strawberry's view)."""
    if scope["method"] in ("PUT", "DELETE"):
        return True
    accept = ""
    for name, value in scope["headers"]:
        if name == TOKEN_HEADER:
            return True
        if name == b"accept":
            accept = value.decode("latin-1")
    if b"token=" in scope.get("query_string", b"") and _token(scope) is not None:
        return True
    return _SSE.accepts(accept) or (scope["method"] == "POST" and _MULTIPART.accepts(accept))


def _token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == TOKEN_HEADER:
            return str(value.decode("latin-1"))
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return str(values[0]) if values else None


def _error(message: str, code: str) -> GraphQLFormattedError:
    return GraphQLError(message, extensions={"code": code}).formatted


def _json(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    body = COMPACT_JSON.encode({"errors": [_error(message, code)]})
    return Response(body, status, headers=headers, media_type="application/json")


class Ended(Exception):
    """Why a stream ends before its operations do; sent to each as an error."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
        self.payload: GraphQLHTTPResponse = {"data": None, "errors": [_error(message, code)]}


EXPIRED = ("token expired", "UNAUTHENTICATED")
SHUTDOWN = ("server shutting down", "SHUTTING_DOWN")
SLOW = ("slow consumer: the stream fell too far behind", "SLOW_CONSUMER")


@dataclass(eq=False)
class Slots:
    """The admission slots one stream (or reservation) holds; released once."""

    admission: Any
    ip: str | None
    viewer: Viewer | None
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.close_ip(self.ip)
            if self.viewer is not None:
                self.admission.close_subject(self.viewer)


@dataclass(eq=False)
class Reservation:
    """A graphql-sse single-connection stream: reserved, then open, then gone."""

    token: str
    viewer: Viewer
    slots: Slots
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(STREAM_QUEUE))
    operations: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    opened: bool = False
    end: Callable[[Ended | None], None] | None = None  # set while the stream is open
    timer: asyncio.TimerHandle | None = None

    overflowed: bool = False

    def put(self, event: str, data: str) -> bool:
        """Queue one event for the stream; False if it is too slow (or not opened
        yet) and holds ``STREAM_QUEUE`` unread events: then it is ended, at once or
        as soon as it opens, with SLOW_CONSUMER for every operation still listed."""
        try:
            self.queue.put_nowait(_SSE.encode_event(event, data))
        except asyncio.QueueFull:
            self.overflowed = True
            if self.end is not None:
                self.end(Ended(*SLOW))
            return False
        return True


class HTTPStreams:
    """Every open HTTP stream and reservation of this process."""

    def __init__(
        self,
        view: GraphQLView,
        *,
        multiplex: bool = False,
        heartbeat_seconds: float = 12.0,
        reservation_seconds: float = 30.0,
    ) -> None:
        """``multiplex``: the ``multiplex`` fast path is on (``api/accel``): channel
        subscriptions the planner accepts join the WebSocket multiplexer's groups.
        The defaults are graphql-sse's reference server's heartbeat and a generous
        wait for a reserved stream."""
        self._view = view
        self._multiplex = multiplex
        self._heartbeat = heartbeat_seconds
        self._reservation_seconds = reservation_seconds
        self._reservations: dict[str, Reservation] = {}
        self._enders: set[Callable[[Ended | None], None]] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._enders)

    # -- entry ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        token = _token(scope)
        method = scope["method"]
        if method == "PUT":
            response = await self._reserve(request)
        elif token is None:
            if method not in ("GET", "POST"):
                response = _json(404, "no stream: reserve one with PUT first", "NOT_FOUND")
            else:
                await self._distinct(request, send)
                return
        elif method == "DELETE":
            response = await self._stop(request, token)
        elif method == "GET" and _SSE.accepts(request.headers.get("accept", "")):
            await self._open(request, token, send)
            return
        elif method in ("GET", "POST"):
            response = await self._start(request, token)
        else:
            response = _json(
                405, "method not allowed", "BAD_INPUT", {"allow": "GET, POST, PUT, DELETE"}
            )
        await response(scope, receive, send)

    async def _context(self, request: Request) -> Context | Response:
        try:
            return await self._view.get_context(request, response=None)
        except RateLimited as exc:
            return _too_many(exc)

    async def _payload(self, request: Request) -> dict[str, Any] | Response:
        """The GraphQL request: JSON body for POST, query parameters for GET."""
        view = self._view
        try:
            if request.method == "GET":
                params = request.query_params
                data: Any = {
                    "query": params.get("query"),
                    "operationName": params.get("operationName"),
                    "variables": _loads(view, params.get("variables")),
                    "extensions": _loads(view, params.get("extensions")),
                }
            else:
                data = view.parse_json(await request.body())
        except Exception as exc:  # noqa: BLE001 - Strawberry's HTTPException or bad JSON
            reason = getattr(exc, "reason", None) or "the request body is not valid JSON"
            return _json(400, str(reason), "BAD_INPUT")
        if not isinstance(data, dict):
            return _json(400, "subscriptions over HTTP cannot be batched", "BAD_INPUT")
        if not isinstance(data.get("query"), str):
            return _json(400, "the request has no query", "BAD_INPUT")
        return data

    async def _admit(self, context: Context, payload: dict[str, Any]) -> Response | None:
        """Mutations against their rate and subscriptions against the subject's cap,
        as over a WebSocket; a refusal is a 429 with the error."""
        planned = self._view.planner.request(payload)
        if planned is None:
            return None
        viewer = context.viewer
        try:
            if planned.operation.operation is OperationType.MUTATION:
                await self._view.admit_mutation(context, planned.operation)
            elif planned.operation.operation is OperationType.SUBSCRIPTION and viewer:
                self._view.admission.admit_subscription(viewer)
        except RateLimited as exc:
            if planned.operation.operation is OperationType.SUBSCRIPTION:
                await limit_hit(context, exc.limit)
            return _too_many(exc)
        return None

    async def _invalid(
        self, context: Context, request: Request, payload: dict[str, Any]
    ) -> Response | None:
        """A document that does not parse or validate is a 400 with its errors (as
        graphql-sse's reference server answers), not a stream."""
        if self._view.planner.request(payload) is not None:
            return None
        async with aclosing(self._results(context, request, payload)) as results:
            async for response in results:
                body = COMPACT_JSON.encode({"errors": response.get("errors") or []})
                return Response(body, 400, media_type="application/json")
        return None  # pragma: no cover - a stream always yields once

    async def _results(
        self, context: Context, request: Request, payload: dict[str, Any]
    ) -> AsyncGenerator[GraphQLHTTPResponse, None]:
        """The operation's results, as Strawberry's view formats them (masked)."""
        view = self._view
        viewer = context.viewer
        counted = viewer is not None
        if counted:
            assert viewer is not None
            view.admission.subject_operations.add(viewer.user_id, 1)
        try:
            results = await view.schema.stream(
                payload["query"],
                variable_values=payload.get("variables"),
                context_value=context,
                operation_name=payload.get("operationName"),
                operation_extensions=payload.get("extensions"),
                allowed_operation_types=_ALL_TYPES,
            )
            async with aclosing(results):
                async for result in results:
                    # Queries, mutations and subscriptions yield ExecutionResults;
                    # incremental frames come only from @defer/@stream, which this
                    # schema does not enable.
                    assert isinstance(result, ExecutionResult)
                    yield await view.process_result(request, result)
        finally:
            if counted:
                assert viewer is not None
                view.admission.subject_operations.add(viewer.user_id, -1)

    def _take_slots(self, context: Context) -> Slots | str:
        """The stream's connection slots, or the name of the limit that refused it
        (``ip_connections`` or ``subject_connections``, as a WebSocket's would be)."""
        admission = self._view.admission
        ip = context.origin[0]
        if not admission.open_ip(ip):
            return "ip_connections"
        viewer = context.viewer
        if viewer is not None and not admission.open_subject(viewer):
            admission.close_ip(ip)
            return "subject_connections"
        return Slots(admission, ip, viewer)

    # -- distinct connections mode and multipart -------------------------------------

    async def _distinct(self, request: Request, send: Send) -> None:
        scope, receive = request.scope, request.receive
        accept = request.headers.get("accept", "")
        multipart = not _SSE.accepts(accept)
        if self.draining:
            await _json(503, SHUTDOWN[0], SHUTDOWN[1])(scope, receive, send)
            return
        context = await self._context(request)
        if isinstance(context, Response):
            await context(scope, receive, send)
            return
        payload = await self._payload(request)
        if isinstance(payload, Response):
            await payload(scope, receive, send)
            return
        refused = await self._invalid(context, request, payload) or await self._admit(
            context, payload
        )
        if refused is not None:
            await refused(scope, receive, send)
            return
        slots = self._take_slots(context)
        if isinstance(slots, str):
            await limit_hit(context, slots)
            await _json(429, TOO_MANY_CONNECTIONS, "RATE_LIMITED")(scope, receive, send)
            return
        transport = _MULTIPART if multipart else _SSE
        plan = self._view.planner.plan(payload) if self._multiplex else None
        try:
            if plan is not None:
                await self._serve_multiplexed(request, send, context, plan, transport)
            else:
                await self._serve(request, send, context, payload, transport)
        finally:
            slots.release()

    async def _serve(
        self,
        request: Request,
        send: Send,
        context: Context,
        payload: dict[str, Any],
        transport: SSETransport | MultipartSubscriptionTransport,
    ) -> None:
        """One operation on one response, until it completes, the client leaves, the
        token expires or the server shuts down."""
        label = "multipart" if transport is _MULTIPART else "sse"
        headers = [(k.lower().encode(), v.encode()) for k, v in transport.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        lock = asyncio.Lock()

        async def write(text: str) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        encode = self._view.encode_json_string
        if transport is _MULTIPART:
            await write(f"\r\n--{transport.separator}")
            await write(transport.heartbeat_message(encode))

        async def produce() -> None:
            async for response in self._results(context, request, payload):
                await write(transport.encode_next(response, encode))

        life = _Lifetime(self, context, label)
        ended = life.ended
        producer = asyncio.create_task(produce())
        watcher = asyncio.create_task(_disconnected(request.receive))
        beats = asyncio.create_task(
            _beat(write, lambda: transport.heartbeat_message(encode), self._heartbeat)
        )
        try:
            waiting: set[asyncio.Future[Any]] = {producer, watcher, ended}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:  # the client left: nothing more to say
                return
            if ended in done and not producer.done():
                producer.cancel()
                with suppress(asyncio.CancelledError):
                    await producer
                reason = ended.result()
                assert reason is not None  # only the multiplexer ends with None
                await write(transport.encode_next(reason.payload, encode))
            elif (failure := producer.exception()) is not None:
                # An error outside any resolver: the client still gets a coded error
                # and complete, not a cut stream (logged here with its traceback).
                log.error("stream.operation_failed", exc_info=failure)
                cause = failure if isinstance(failure, Exception) else None
                error = masked(GraphQLError(str(failure), original_error=cause))
                await write(
                    transport.encode_next({"data": None, "errors": [error.formatted]}, encode)
                )
            await write(transport.encode_complete())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote
        finally:
            life.close()
            for task in (producer, watcher, beats):
                task.cancel()
            for task in (producer, watcher, beats):
                with suppress(asyncio.CancelledError, Exception):
                    await task

    async def _serve_multiplexed(
        self,
        request: Request,
        send: Send,
        context: Context,
        plan: Plan,
        transport: SSETransport | MultipartSubscriptionTransport,
    ) -> None:
        """A channel subscription served by the multiplexer, as a WebSocket's is: each
        message is executed and encoded once for its group, and this stream gets that
        payload in its own framing (``StreamMember``). What the client sees is what
        :meth:`_serve` sends for the same document."""
        services = context.services
        encode = self._view.encode_json_string
        headers = [(k.lower().encode(), v.encode()) for k, v in transport.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def write(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        if transport is _MULTIPART:
            await write(f"\r\n--{transport.separator}")
            await write(transport.heartbeat_message(encode))
        try:
            channel = await authorize(context, plan.name, Action.SUBSCRIBE)
        except ApiError as exc:
            error = masked(GraphQLError(str(exc), extensions=exc.extensions))
            await write(transport.encode_next({"data": None, "errors": [error.formatted]}, encode))
            await write(transport.encode_complete())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        plan = replace(plan, channel=channel.name)
        label = "multipart" if transport is _MULTIPART else "sse"
        life = _Lifetime(self, context, label)
        ended = life.ended
        outbox = StreamOutbox(send, services.mux.outbox_limit, lambda: life.end(Ended(*SLOW)))
        member = StreamMember("", outbox, b"", build=_builder(transport))
        member.on_end = lambda: life.end(None)  # the multiplexer ended it and said why
        viewer = context.viewer
        if viewer is not None:
            self._view.admission.subject_operations.add(viewer.user_id, 1)
        key = plan.group_key(context)
        emit(services, viewer, "subscription.start", {"channel": channel.name}, channel=channel)
        since = Position(int(plan.since["offset"]), plan.since["epoch"]) if plan.since else None
        watcher = asyncio.create_task(_disconnected(request.receive))
        beats = asyncio.create_task(
            _beat(outbox.push_text, lambda: transport.heartbeat_message(encode), self._heartbeat)
        )
        try:
            await services.mux.join(plan, context, member, since)
            waiting: set[asyncio.Future[Any]] = {watcher, ended}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                return
            reason = ended.result()
            if reason is None:  # its frames (error, complete) are in the outbox
                await outbox.drained()
            else:
                await services.mux.leave(key, member)
                await outbox.stop()
                if reason.code == SLOW[1]:
                    services.metrics.slow_subscribers.inc()
                await write(transport.encode_next(reason.payload, encode))
                await write(transport.encode_complete())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            life.close()
            await services.mux.leave(key, member)
            await outbox.stop()
            if viewer is not None:
                self._view.admission.subject_operations.add(viewer.user_id, -1)
            emit(services, viewer, "subscription.stop", {"channel": channel.name}, channel=channel)
            for task in (watcher, beats):
                task.cancel()
            for task in (watcher, beats):
                with suppress(asyncio.CancelledError, Exception):
                    await task

    # -- single connection mode --------------------------------------------------------

    async def _reserve(self, request: Request) -> Response:
        if self.draining:
            return _json(503, SHUTDOWN[0], SHUTDOWN[1])
        context = await self._context(request)
        if isinstance(context, Response):
            return context
        if context.viewer is None:
            return _json(401, context.auth_error or "authentication required", "UNAUTHENTICATED")
        slots = self._take_slots(context)
        if isinstance(slots, str):
            await limit_hit(context, slots)
            return _json(429, TOO_MANY_CONNECTIONS, "RATE_LIMITED")
        token = secrets.token_urlsafe(24)
        reservation = Reservation(token, context.viewer, slots)
        reservation.timer = asyncio.get_running_loop().call_later(
            self._reservation_seconds, self._expire_reservation, reservation
        )
        self._reservations[token] = reservation
        return Response(token, 201, media_type="text/plain")

    def _expire_reservation(self, reservation: Reservation) -> None:
        if not reservation.opened:
            self._drop(reservation)

    def _drop(self, reservation: Reservation) -> None:
        if self._reservations.get(reservation.token) is reservation:
            del self._reservations[reservation.token]
        if reservation.timer is not None:
            reservation.timer.cancel()
        for task in reservation.operations.values():
            task.cancel()
        reservation.operations.clear()
        reservation.slots.release()

    async def _owned(self, request: Request, token: str) -> tuple[Reservation, Context] | Response:
        reservation = self._reservations.get(token)
        if reservation is None:
            return _json(404, "stream not found: reserve one with PUT", "NOT_FOUND")
        context = await self._context(request)
        if isinstance(context, Response):
            return context
        viewer = context.viewer
        if viewer is None or viewer.user_id != reservation.viewer.user_id:
            return _json(403, "this stream was reserved by someone else", "FORBIDDEN")
        return reservation, context

    async def _open(self, request: Request, token: str, send: Send) -> None:
        owned = await self._owned(request, token)
        if isinstance(owned, Response):
            await owned(request.scope, request.receive, send)
            return
        reservation, context = owned
        if reservation.opened:
            await _json(409, "stream already open", "CONFLICT")(
                request.scope, request.receive, send
            )
            return
        reservation.opened = True
        if reservation.timer is not None:
            reservation.timer.cancel()
        metrics = context.services.metrics
        headers = [(k.lower().encode(), v.encode()) for k, v in _SSE.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def write(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        life = _Lifetime(self, context, "sse")
        ended = life.ended
        reservation.end = life.end
        if reservation.overflowed:  # it filled up before anyone opened it
            life.end(Ended(*SLOW))
        watcher = asyncio.create_task(_disconnected(request.receive))
        encode = self._view.encode_json_string
        try:
            await write(_SSE.encode_comment("stream open"))
            while True:
                getter = asyncio.ensure_future(_next(reservation.queue))
                waiting: set[asyncio.Future[Any]] = {getter, watcher, ended}
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=self._heartbeat,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()
                    with suppress(asyncio.CancelledError):
                        await getter
                if watcher in done:
                    return
                if getter in done:
                    await write(getter.result())
                    continue
                if ended in done:
                    reason = ended.result()
                    assert reason is not None  # only the multiplexer ends with None
                    if reason.code == SLOW[1]:
                        metrics.slow_subscribers.inc()
                    await self._flush(reservation, write)
                    for op_id in list(reservation.operations):
                        data = encode({"id": op_id, "payload": reason.payload})
                        await write(_SSE.encode_event("next", data))
                        await write(_SSE.encode_event("complete", encode({"id": op_id})))
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                await write(_SSE.encode_comment("ping"))
        except OSError:
            pass
        finally:
            life.close()
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
            self._drop(reservation)

    async def _flush(
        self, reservation: Reservation, write: Callable[[str], Awaitable[None]]
    ) -> None:
        while not reservation.queue.empty():
            await write(reservation.queue.get_nowait())

    async def _start(self, request: Request, token: str) -> Response:
        owned = await self._owned(request, token)
        if isinstance(owned, Response):
            return owned
        reservation, context = owned
        payload = await self._payload(request)
        if isinstance(payload, Response):
            return payload
        extensions = payload.get("extensions")
        op_id = extensions.get("operationId") if isinstance(extensions, dict) else None
        if not isinstance(op_id, str) or not op_id:
            return _json(400, "extensions.operationId is missing", "BAD_INPUT")
        if op_id in reservation.operations:
            return _json(409, f"operation {op_id!r} already exists", "CONFLICT")
        refused = await self._invalid(context, request, payload) or await self._admit(
            context, payload
        )
        if refused is not None:
            return refused
        task = asyncio.create_task(self._operate(reservation, context, request, payload, op_id))
        reservation.operations[op_id] = task
        return Response(None, 202)

    async def _operate(
        self,
        reservation: Reservation,
        context: Context,
        request: Request,
        payload: dict[str, Any],
        op_id: str,
    ) -> None:
        encode = self._view.encode_json_string
        cut = False  # the stream overflowed: stay listed, so its end tells this one too
        try:
            async for response in self._results(context, request, payload):
                if not reservation.put("next", encode({"id": op_id, "payload": response})):
                    cut = True
                    return
            reservation.put("complete", encode({"id": op_id}))
        except Exception as exc:  # an error outside any resolver: masked, then complete
            error = (
                exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
            )
            log.exception("sse.operation_failed")
            result = {"data": None, "errors": [masked(error).formatted]}
            reservation.put("next", encode({"id": op_id, "payload": result}))
            reservation.put("complete", encode({"id": op_id}))
        finally:
            if not cut and reservation.operations.get(op_id) is asyncio.current_task():
                del reservation.operations[op_id]

    async def _stop(self, request: Request, token: str) -> Response:
        owned = await self._owned(request, token)
        if isinstance(owned, Response):
            return owned
        reservation, _ = owned
        op_id = request.query_params.get("operationId")
        if not op_id:
            return _json(400, "operationId is missing", "BAD_INPUT")
        task = reservation.operations.pop(op_id, None)
        if task is not None:
            task.cancel()
        return Response(None, 200)

    # -- shutdown --------------------------------------------------------------------

    def drain(self) -> int:
        """End every open stream with ``SHUTTING_DOWN`` (then ``complete``) and refuse
        new ones, so uvicorn's graceful shutdown is not held open by them."""
        self.draining = True
        enders = list(self._enders)
        for end in enders:
            end(Ended(*SHUTDOWN))
        for reservation in list(self._reservations.values()):
            if not reservation.opened:
                self._drop(reservation)
        return len(enders)


class _Lifetime:
    """One open stream's end: ``ended`` resolves with why (None: the multiplexer
    ended it and told the client itself), ``end`` is how the token's deadline, a
    drain or an overflow end it; registered for drain and counted in
    ``edumatrix_http_streams`` until :meth:`close`."""

    def __init__(self, streams: HTTPStreams, context: Context, label: str) -> None:
        self.ended: asyncio.Future[Ended | None] = asyncio.get_running_loop().create_future()
        self._streams = streams
        self._gauge = context.services.metrics.http_streams.labels(transport=label)
        streams._enders.add(self.end)
        self._expiry = _schedule(context, self.end)
        self._gauge.inc()

    def end(self, reason: Ended | None) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)

    def close(self) -> None:
        self._streams._enders.discard(self.end)
        if self._expiry is not None:
            self._expiry.cancel()
        self._gauge.dec()


def _schedule(context: Context, end: Callable[[Ended | None], None]) -> asyncio.TimerHandle | None:
    """End the stream when its token stops being accepted (``TokenService.deadline``)."""
    viewer = context.viewer
    deadline = None if viewer is None else context.services.tokens.deadline(viewer)
    if deadline is None:
        return None
    delay = max(deadline - time.time(), 0.0)
    return asyncio.get_running_loop().call_later(delay, end, Ended(*EXPIRED))


async def _next(queue: asyncio.Queue[str]) -> str:
    return await queue.get()


async def _disconnected(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _beat(
    write: Callable[[str], Awaitable[None]], message: Callable[[], str], every: float
) -> None:
    while True:
        await asyncio.sleep(every)
        await write(message())


def _too_many(exc: RateLimited) -> Response:
    """429 with ``Retry-After`` and the error (its code and limit), as for any request."""
    headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    body = COMPACT_JSON.encode(
        {"errors": [GraphQLError(str(exc), extensions=exc.extensions).formatted]}
    )
    return Response(body, 429, headers=headers, media_type="application/json")


def _loads(view: GraphQLView, text: str | None) -> Any:
    return None if text is None else view.parse_json(text)


class StreamOutbox:
    """An HTTP stream's bounded queue of framed messages, for the multiplexer.

    The multiplexer pushes synchronously while it fans out; a drain task writes what
    is queued through ASGI ``send``, everything waiting in one write. A stream that
    lets ``limit`` frames pile up is not reading: it is ended (``SLOW_CONSUMER``)
    instead of slowing its group down, as a WebSocket's :class:`Outbox` is.
    """

    def __init__(self, send: Send, limit: int, on_overflow: Callable[[], None]) -> None:
        self._send = send
        self._limit = limit
        self._on_overflow = on_overflow
        self._frames: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.overflowed = False
        self._stopped = False
        self._task = asyncio.create_task(self._drain(), name="sse-outbox")

    def push(self, frame: bytes) -> None:
        if self.overflowed or self._stopped:
            return
        if len(self._frames) >= self._limit:
            self.overflow()
            return
        self._frames.append(frame)
        self._idle.clear()
        self._wake.set()

    async def push_text(self, text: str) -> None:
        self.push(text.encode())

    async def push_paced(self, frame: bytes) -> None:
        """Push without overflowing: history replay waits for the stream instead."""
        while len(self._frames) > self._limit // 2 and not (self.overflowed or self._stopped):
            self._room.clear()
            await self._room.wait()
        self.push(frame)

    def overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self._frames.clear()
            self._room.set()
            self._on_overflow()

    async def drained(self, limit: float = 5.0) -> None:
        """Wait (bounded) until everything pushed so far is written."""
        with suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._idle.wait()

    async def stop(self) -> None:
        self._stopped = True
        self._frames.clear()
        self._room.set()
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def _drain(self) -> None:
        frames = self._frames
        while True:
            await self._wake.wait()
            self._wake.clear()
            while frames:
                body = frames.popleft() if len(frames) == 1 else b"".join(_take(frames))
                await self._send({"type": "http.response.body", "body": body, "more_body": True})
                self._room.set()
            self._idle.set()


def _take(frames: deque[bytes]) -> list[bytes]:
    taken = list(frames)
    frames.clear()
    return taken


@dataclass(eq=False, slots=True)
class StreamMember(Member):
    """A multiplexer member that is an HTTP stream: the group's payload framed as an
    SSE ``next`` event or a multipart part, shared by every stream of the group."""

    build: Callable[[bytes], bytes] = bytes

    def send(self, frames: Frames) -> None:
        self.outbox.push(frames.for_stream(_STREAM_KEYS[self.build], self.build))

    async def send_paced(self, payload: bytes) -> None:
        await self.outbox.push_paced(self.build(payload))

    def ended_frames(self, error: ApiError) -> list[bytes]:
        payload = {
            "data": None,
            "errors": [{"message": str(error), "extensions": error.extensions}],
        }
        body = COMPACT_JSON.encode(payload).encode()
        return [self.build(body), _COMPLETE[self.build]]


def _sse_next(payload: bytes) -> bytes:
    return b"event: next\r\ndata: " + payload + b"\r\n\r\n"


def _multipart_next(payload: bytes) -> bytes:
    body = b'{"payload":' + payload + b"}"
    return (
        b"\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n--"
        + _MULTIPART.separator.encode()
    )


_STREAM_KEYS: dict[Callable[[bytes], bytes], bytes] = {_sse_next: b"sse", _multipart_next: b"mp"}
_COMPLETE: dict[Callable[[bytes], bytes], bytes] = {
    _sse_next: _SSE.encode_complete().encode(),
    _multipart_next: _MULTIPART.encode_complete().encode(),
}


def _builder(transport: SSETransport | MultipartSubscriptionTransport) -> Callable[[bytes], bytes]:
    """The framing of ``transport`` for a payload already JSON-encoded by the group;
    byte for byte what ``transport.encode_next`` gives for the same result."""
    return _multipart_next if transport is _MULTIPART else _sse_next
