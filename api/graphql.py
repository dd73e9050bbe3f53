"""The GraphQL view: HTTP, both WebSocket protocols and GraphiQL on one route.

Authentication happens here, once per HTTP request or WebSocket connection. A
WebSocket whose ``connection_init`` carries no valid token is closed with 4403
before any operation runs, in both protocols (legacy ``graphql-ws`` would
otherwise use 1011); on graphql-transport-ws an expired one with 4401 ``token
expired``, which graphql-ws clients do not retry (``ExpiredAtInit``). An accepted
connection lives until its token's ``exp`` plus the leeway
(``TokenService.deadline``, the instant the check itself uses) and is then closed
with 4403 ``token expired``, unless ``refreshConnectionToken``
(``resolvers/connection.py``) gave it a new token first.

Admission control (``api/admission.py``) is applied here too: connections per IP
and per subject, inbound messages per connection, operations per subject and
mutations per subject (HTTP 429 with ``Retry-After``, or an error for that
WebSocket operation), failed authentications per IP, and the ``connection_init``
timeout of legacy ``graphql-ws`` (Strawberry has one for graphql-transport-ws only).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from cross_web import HTTPException  # the error type Strawberry's view answers with
from graphql import GraphQLError, OperationDefinitionNode, OperationType
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types import ExecutionResult
from strawberry.types.unset import UnsetType

from api.admission import (
    FLOOD,
    FLOODED,
    INIT_TIMEOUT,
    TOO_MANY,
    TOO_MANY_AUTH_FAILURES,
    TOO_MANY_CONNECTIONS,
    Admission,
    Refused,
)
from api.auditing import (
    CloseWatch,
    auth_failed,
    limit_hit,
    with_request_id,
    ws_closed,
    ws_opened,
)
from api.auth import AuthError, TokenExpired
from api.clientinfo import request_id
from api.connections import FORBIDDEN, GOING_AWAY, UNAUTHORIZED
from api.encoding import COMPACT_JSON, UNSAFE_TEXT, suspect, unsafe_text
from api.graphiql import GraphiQLPage
from api.media import (
    BAD_REQUEST,
    MEDIA_KEY,
    METHOD_NOT_ALLOWED,
    NOT_ACCEPTABLE,
    OPERATION_RESOLUTION_FAILURE,
    REQUEST_ERROR_KEY,
    Media,
    accept_header,
    media_of,
    negotiate,
    refusal,
    status_for,
)
from api.metrics import Metrics
from api.plan import Planner
from api.streaming import HTTPStreams
from api.streaming import wants as wants_stream
from resolvers.emit import emit
from schema.context import Context, Services
from schema.errors import RateLimited, masked

if TYPE_CHECKING:  # fast paths, imported only when api/accel turns them on
    from api.http_fast import FastHTTP

log = structlog.get_logger(__name__)

SUBSCRIPTION_NEEDS_STREAM = (
    "a subscription needs a stream: send Accept: text/event-stream (SSE) or "
    'multipart/mixed;subscriptionSpec="1.0", or use a WebSocket'
)


class _ConnectionTracking:
    """Shared by both protocol handlers: count the connection, stop the expiry timer,
    audit the close of an accepted connection, admit connections and operations
    (``api/admission.py``; inbound frames are counted in ``GraphQLView.__call__``)."""

    context: Context
    protocol: str
    view: Any  # the GraphQLView
    websocket: Any  # Strawberry's adapter
    connection_acknowledged: bool
    _operations_attr: str  # the handler's dict of open operations

    if TYPE_CHECKING:  # provided by the protocol handler this is mixed into

        async def send_message(self, message: Any) -> None: ...

    async def _tracked(self, handle: Any) -> None:
        services = self.context.services
        websocket = self.context.request
        assert isinstance(websocket, WebSocket)
        if services.connections.draining:
            await websocket.close(code=GOING_AWAY, reason="server shutting down")
            return
        admission: Admission = self.view.admission
        ip = self.context.origin[0]
        if not admission.open_ip(ip):
            await limit_hit(self.context, "ip_connections")
            await websocket.close(code=TOO_MANY, reason=TOO_MANY_CONNECTIONS)
            return
        setattr(self, self._operations_attr, admission.operations(self.context))
        services.connections.add(websocket)
        services.metrics.connections.inc()
        try:
            await handle()
        finally:
            if websocket.scope.get(FLOODED):  # the handler has ended; now the close
                await services.connections.close(websocket, TOO_MANY, FLOOD)
                await limit_hit(self.context, "ws_messages")
            services.metrics.connections.dec()
            services.connections.discard(websocket)
            if self.context.expiry is not None:
                self.context.expiry.cancel()
            admission.close_ip(ip)
            if self.context.viewer is not None:  # set only with a subject slot taken
                admission.close_subject(self.context.viewer)
            ws_closed(self.context, self.protocol)

    async def _over_limit(
        self,
        message: dict[str, Any],
        start: str,
        error_frame: Callable[[str, GraphQLError], dict[str, Any]],
    ) -> bool:
        """Refuse a new operation over the subject's subscription or mutation limit
        with an error for that operation (code RATE_LIMITED); True if refused.

        Anything Strawberry itself answers (before ``connection_init``, a duplicate
        id) is left to it.
        """
        op_id = message.get("id")
        viewer = self.context.viewer
        if (
            message.get("type") != start
            or not self.connection_acknowledged
            or not isinstance(op_id, str)
            or viewer is None
            or op_id in getattr(self, self._operations_attr)
        ):
            return False
        # Queries and mutations; None for subscriptions and for invalid documents.
        request = self.view.planner.operation(message.get("payload"))
        try:
            if request is None:
                self.view.admission.admit_subscription(viewer)
            elif request.operation.operation is OperationType.MUTATION:
                await self.view.admit_mutation(self.context, request.operation)
        except RateLimited as exc:
            error = GraphQLError(str(exc), extensions=exc.extensions)
            await self.send_message(error_frame(op_id, error))
            if request is None:  # a mutation's refusal is recorded by admit_mutation
                await limit_hit(self.context, exc.limit)
            return True
        return False


class ExpiredAtInit(Refused):
    """An expired token in ``connection_init``.

    graphql-transport-ws: closed with 4401 ``token expired``. The graphql-ws client
    retries a 4403 (so that its ``connectionParams`` may fetch a new token) and resets
    its retry count on every ``connection_ack``; the same token can only be refused
    again, and it gives up on 4401. Legacy graphql-ws: ``connection_error`` and 4403,
    as for any refused token; its clients (subscriptions-transport-ws) retry whatever
    the close code, and only an acknowledgement resets their backoff.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(UNAUTHORIZED, reason)
        self.payload = {"message": reason, "code": "FORBIDDEN"}


class TransportWSHandler(_ConnectionTracking, BaseGraphQLTransportWSHandler[Context, None]):
    protocol = "graphql-transport-ws"
    _operations_attr = "operations"

    async def handle(self) -> None:
        await self._tracked(super().handle)

    async def handle_message(self, message: Any) -> None:
        if await _refused(self, message, "subscribe", _transport_ws_error):
            return
        if await self._over_limit(message, "subscribe", _transport_ws_error):
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        try:
            await super().handle_connection_init(message)
        except Refused as exc:  # over an admission limit: 4429, not Strawberry's 4403
            await self.websocket.close(code=exc.code, reason=exc.reason)
        if self.connection_init_received:
            # Strawberry cancelled its timeout task above but keeps the Task object
            # (~1.5 KB with its coroutine) for the life of the connection.
            self.connection_init_timeout_task = None


class LegacyWSHandler(_ConnectionTracking, BaseGraphQLWSHandler[Context, None]):
    protocol = "graphql-ws"
    _operations_attr = "tasks"
    _init_received = False
    _init_timer: asyncio.TimerHandle | None = None
    _init_timeout_close: asyncio.Task[None] | None = None

    async def handle(self) -> None:
        # Strawberry's legacy handler waits for connection_init forever; a socket
        # that never sends it is closed like graphql-transport-ws closes it.
        delay = self.view.connection_init_wait_timeout.total_seconds()
        self._init_timer = asyncio.get_running_loop().call_later(delay, self._init_timed_out)
        try:
            await self._tracked(super().handle)
        finally:
            self._init_timer.cancel()

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        """Queries and mutations too: one ``data`` (errors included), then ``complete``.

        Why: subscriptions-transport-ws apps send every operation over the socket,
        and Python gql's WebSocket transports negotiate this protocol first, so
        ``session.execute(query)`` went here. Strawberry's legacy handler only
        subscribes: a query ended in a masked "Unexpected error.". The planner says
        what the document is (parsed within the token limit); Strawberry's
        ``execute`` validates it with the schema's rules and limits, and a document
        that does not validate gets its errors (with their codes) in the ``data``
        message. Subscriptions and documents that do not parse go on to Strawberry,
        as before. Admission already counted a mutation (``_over_limit``).
        """
        kind = self.view.planner.operation_type(query, operation_name)
        if kind is None or kind is OperationType.SUBSCRIPTION:
            await super().handle_async_results(operation_id, query, operation_name, variables)
            return
        try:
            result = await self.schema.execute(
                query,
                variable_values=variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=operation_name,
            )
            await self.send_data_message(result, operation_id)
            await self.send_message({"type": "complete", "id": operation_id})
        except asyncio.CancelledError:  # stopped by the client, as Strawberry answers it
            await self.send_message({"type": "complete", "id": operation_id})
        finally:
            self.tasks.pop(operation_id, None)

    def _init_timed_out(self) -> None:
        if self._init_received:
            return
        websocket = self.context.request
        assert isinstance(websocket, WebSocket)
        close = self.context.services.connections.close(
            websocket, INIT_TIMEOUT, "Connection initialisation timeout"
        )
        self._init_timeout_close = asyncio.get_running_loop().create_task(close)

    async def handle_message(self, message: Any) -> None:
        if await _refused(self, message, "start", _legacy_error):
            return
        if await self._over_limit(message, "start", _legacy_error):
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        if self._init_timeout_close is not None:  # too late: the socket is being closed
            return
        if self._init_received:  # each would take a subject slot and a keep-alive task
            await self.websocket.close(code=TOO_MANY, reason="Too many initialisation requests")
            return
        self._init_received = True
        if self._init_timer is not None:
            self._init_timer.cancel()
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.send_message({"type": "connection_error"})
            await self.websocket.close(code=4400, reason="Invalid connection init payload")
            return
        self.context.connection_params = payload
        try:
            ack_payload: UnsetType | dict[str, object] | None
            ack_payload = await self.view.on_ws_connect(self.context)
        except (ConnectionRejectionError, ExpiredAtInit) as exc:
            await self.send_message({"type": "connection_error", "payload": exc.payload})
            await self.websocket.close(code=FORBIDDEN, reason="Forbidden")
            return
        except Refused as exc:
            payload = {"message": exc.reason, "code": "RATE_LIMITED"}
            await self.send_message({"type": "connection_error", "payload": payload})
            await self.websocket.close(code=exc.code, reason=exc.reason)
            return
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})
        self.connection_acknowledged = True
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())


def _transport_ws_error(op_id: str, error: GraphQLError) -> dict[str, Any]:
    return {"id": op_id, "type": "error", "payload": [error.formatted]}


def _legacy_error(op_id: str, error: GraphQLError) -> dict[str, Any]:
    return {"type": "error", "id": op_id, "payload": error.formatted}


async def _refused(
    handler: Any,
    message: object,
    start: str,
    error_frame: Callable[[str, GraphQLError], dict[str, Any]],
) -> bool:
    """Answer a message both protocols' handlers would mishandle; True if answered.

    A frame that is JSON but not an object (``[1,2]``, ``null``) raised inside
    Strawberry and dropped the socket with no close frame: it is closed with 4400,
    as graphql-transport-ws prescribes for an invalid message. An operation whose
    variables hold a NUL or a lone surrogate (no store takes them) is refused with
    a BAD_INPUT error for that operation; the connection and its other
    subscriptions go on.
    """
    if not isinstance(message, dict):
        await handler.websocket.close(code=4400, reason="Invalid message: not a JSON object")
        return True
    op_id = message.get("id")
    if (
        message.get("type") == start
        and isinstance(op_id, str)
        and handler.connection_acknowledged
        and unsafe_text(message.get("payload"))
    ):
        error = GraphQLError(UNSAFE_TEXT, extensions={"code": "BAD_INPUT"})
        await handler.send_message(error_frame(op_id, error))
        return True
    return False


def multiplexed_handler_class() -> type[TransportWSHandler]:
    """graphql-transport-ws with multiplexed ``channel`` subscriptions (the
    ``multiplex`` fast path); imported only when ``api/accel`` turns it on."""
    from api.mux_handler import MultiplexedSubscribe

    class MultiplexedTransportWSHandler(MultiplexedSubscribe, TransportWSHandler):
        async def handle(self) -> None:
            assert isinstance(self.view, GraphQLView)
            self.planner = self.view.planner
            self._init_mux()
            await super().handle()

    return MultiplexedTransportWSHandler


class GraphQLView(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    planner: Planner  # set by create_app; decides which subscriptions are multiplexed
    fast: FastHTTP | None = None  # set by create_app when the ``http`` fast path is on
    tarpit_seconds = 0.0  # set by create_app (EDUMATRIX_RATE_LIMIT_TARPIT_SECONDS)
    metrics: Metrics
    admission: Admission  # set by create_app
    streams: HTTPStreams  # set by create_app: SSE and multipart (api/streaming.py)
    ide: GraphiQLPage  # set by create_app: our GraphiQL page, no CDN (api/graphiql.py)

    async def render_graphql_ide(self, request: Request) -> Response:
        return self.ide.response(request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                receive, send = CloseWatch.install(scope, receive, send)
                receive = self.admission.counted_receive(scope, receive)
            await super().__call__(scope, receive, send)
            return
        send = with_request_id(scope, send)
        if wants_stream(scope):  # SSE and multipart: their own Accept and lifetime
            await self.streams(scope, receive, send)
            return
        started = time.perf_counter()
        media = scope[MEDIA_KEY] = negotiate(accept_header(scope))
        try:
            if media is Media.UNACCEPTABLE and not _asks_for_ide(scope):
                message = "Accept names neither application/graphql-response+json nor JSON"
                await refusal(406, message, NOT_ACCEPTABLE, Media.JSON)(scope, receive, send)
                return
            if self.fast is not None and scope["method"] == "POST" and media in _FAST_MEDIA:
                replay = await self.fast(scope, receive, send, media)
                if replay is None:
                    return
                receive = replay
            self.metrics.http_strawberry.inc()
            await self._stock(scope, receive, send, media)
        except RateLimited as exc:  # raised before anything was sent (get_context, admit)
            # Tarpit: a keep-alive connection that floods over its rate gets one
            # answer per tarpit period, so refusing it stops costing the server CPU
            # (without it, 8 connections drew ~8,000 429s a second; bench/flood.py).
            # Jittered, so many throttled connections do not come back in step.
            if exc.retry_after:
                delay = min(self.tarpit_seconds, exc.retry_after)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            await _too_many_requests(exc, media_of(scope))(scope, receive, send)
        finally:
            self.metrics.http_duration.observe(time.perf_counter() - started)

    async def _stock(self, scope: Scope, receive: Receive, send: Send, media: Media) -> None:
        """Strawberry's HTTP handling (its ``GraphQL.__call__``), answering in the
        negotiated media type (``api/media.py``) and refusing with a coded JSON error
        where Strawberry answers with text."""
        try:
            response = await self.run(Request(scope, receive))
        except HTTPException as exc:
            response = _json_refusal(exc, media_of(scope))
        else:
            # Strawberry's result responses are application/json; the IDE's page and
            # streams are left as they are.
            if media is Media.GRAPHQL_RESPONSE and response.media_type == "application/json":
                response.headers["content-type"] = media.value
                if scope.get(REQUEST_ERROR_KEY):
                    response.status_code = 400
        await response(scope, receive, send)

    async def admit_mutation(self, context: Context, operation: OperationDefinitionNode) -> None:
        """Count a mutation's root fields against its viewer's rate (an anonymous one
        fails in its resolvers); raise RateLimited over it. Called before execution,
        by every path that executes mutations."""
        if context.viewer is not None:
            cost = len(operation.selection_set.selections)
            try:
                await self.admission.admit_mutation(context.viewer, cost)
            except RateLimited as exc:
                await limit_hit(context, exc.limit)
                raise

    async def execute_operation(  # noqa: PLR0917 - Strawberry's signature
        self,
        request: Request,
        request_adapter: Any,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Any,
    ) -> Any:
        """Strawberry's HTTP path (``api/http_fast.py`` admits its own): mutations are
        admitted before any of the request executes."""
        for data in request_data if isinstance(request_data, list) else [request_data]:
            kind = self.planner.operation_type(data.query, data.operation_name)
            if kind is OperationType.SUBSCRIPTION and data.protocol == "http":
                # A plain JSON response cannot carry a stream: say how to get one
                # (Strawberry would run it as a query and answer "Unexpected error.").
                raise HTTPException(400, SUBSCRIPTION_NEEDS_STREAM)
            payload = {"query": data.query, "operationName": data.operation_name}
            planned = self.planner.operation(payload)  # cached; None: not a valid query/mutation
            if planned is not None and planned.operation.operation is OperationType.MUTATION:
                await self.admit_mutation(context, planned.operation)
        return await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )

    def encode_json(self, data: object) -> str:
        """Strawberry's output from one shared encoder (``api/encoding.py``)."""
        return COMPACT_JSON.encode(data)

    def parse_json(self, data: str | bytes) -> Any:
        """Strawberry's request decoding (bodies, GET parameters), refusing with a
        400 that says why what it would have failed on later: a body that is not an
        object (or a list, for batches) and strings no store can take (see
        ``api.encoding``)."""
        value = super().parse_json(data)
        if not isinstance(value, dict | list):  # Strawberry answered null or 42 with a 500
            raise HTTPException(400, "the request JSON must be an object")
        if suspect(data) and unsafe_text(value):
            raise BadInputHTTP(400, UNSAFE_TEXT)
        return value

    async def parse_http_body(self, request: Any) -> GraphQLRequestData | list[GraphQLRequestData]:
        """Strawberry's, which checks the type of ``query``, ``variables`` and
        ``extensions`` but took any ``operationName`` (``0`` was "Unknown operation
        named 0"): a request whose ``operationName`` is not a string is malformed."""
        data = await super().parse_http_body(request)
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item.operation_name, str | None):
                raise HTTPException(
                    400,
                    "The GraphQL operation's `operationName` must be a string or null, "
                    "if provided.",
                )
        return data

    async def execute_single(  # noqa: PLR0917 - Strawberry's signature
        self,
        request: Request,
        request_adapter: Any,
        sub_response: Any,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """An operation name that names no operation (or none where the document has
        several) is a GraphQL request error with a code, answered like a validation
        error (``api/media.py``), not Strawberry's text/plain 400."""
        try:
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )
        except HTTPException as exc:
            if not isinstance(exc.__cause__, CannotGetOperationTypeError):
                raise
            error = GraphQLError(exc.reason, extensions={"code": OPERATION_RESOLUTION_FAILURE})
            self.schema.process_errors([error])
            return ExecutionResult(data=None, errors=[error])

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # MaskErrors runs after the operation; an exception outside any resolver
        # skips it and Strawberry would answer with the exception's own message.
        if result.errors:
            result.errors = [masked(e) for e in result.errors]
        response = await super().process_result(request, result)
        if status_for(media_of(request.scope), result.data, result.errors or ()) != 200:
            # A request error as application/graphql-response+json: 400, no data entry.
            request.scope[REQUEST_ERROR_KEY] = True
            response.pop("data", None)
        return response

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        # The lifespan's state and the header straight from the ASGI scope: Starlette's
        # ``State`` and ``Headers`` objects, built per request to read one entry each,
        # were ~1.5% of a publish.
        services: Services = request.scope["state"]["services"]
        context = Context(request=request, services=services, request_id=request_id(request.scope))
        if isinstance(request, Request):
            header = _authorization(request.scope)
            if header is not None:
                try:
                    context.viewer = services.tokens.verify_header(header)
                except AuthError as exc:
                    context.auth_error = exc.reason
                    throttled = await self._auth_failed(context, "http", exc.reason, header)
                    if throttled is not None:
                        raise throttled from exc  # 429 (see __call__)
                else:
                    emit(services, context.viewer, "auth.login", {"transport": "http"})
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        value: object = params.get("authorization", params.get("Authorization"))
        services = context.services
        try:
            viewer = services.tokens.verify_header(value if isinstance(value, str) else None)
        except AuthError as exc:
            throttled = await self._auth_failed(
                context, "websocket", exc.reason, value if isinstance(value, str) else None
            )
            if throttled is not None:
                raise Refused(TOO_MANY, TOO_MANY_AUTH_FAILURES) from exc
            if isinstance(exc, TokenExpired):
                raise ExpiredAtInit(exc.reason) from exc
            raise ConnectionRejectionError({"message": exc.reason, "code": "FORBIDDEN"}) from exc
        if not self.admission.open_subject(viewer):
            context.viewer = viewer  # the row names who; no subject slot was taken
            await limit_hit(context, "subject_connections")
            context.viewer = None
            raise Refused(TOO_MANY, TOO_MANY_CONNECTIONS)
        context.viewer = viewer  # from here on the subject's slot is released at close
        emit(services, viewer, "auth.login", {"transport": "websocket"})
        ws_opened(context)
        if isinstance(context.request, WebSocket):
            # Accepted means verify() found exp + leeway ahead: the connection lives
            # until then, unless refreshConnectionToken moves it (resolvers/connection.py).
            context.expiry = services.connections.expire_at(
                context.request, services.tokens.deadline(viewer)
            )
        return UnsetType()  # the singleton UNSET; means "ack without payload"

    async def _auth_failed(
        self, context: Context, transport: str, reason: str, header: str | None = None
    ) -> RateLimited | None:
        """Count, log, emit and audit a failed authentication; the error to answer
        with instead when its IP is over the failed-authentication rate. Then only the
        metrics and the audit trail's count see it (one log line and event per
        attempt is what a flood would write to disk)."""
        services = context.services
        services.metrics.auth_failures.labels(transport=transport).inc()
        throttled = await self.admission.auth_failed(context.origin[0])
        if throttled is None:
            # Only a token we signed names whose login failed (expired, say); anything
            # else is not attributable to an institution or user (see signed_identity).
            identity = services.tokens.signed_identity(header)
            if identity is not None:
                sub, inst = identity
                data = {"transport": transport, "reason": reason}
                emit(services, None, "auth.failed", data, institution=inst, user=sub)
            log.info("auth.failed", transport=transport, reason=reason)
        await auth_failed(context, transport, reason, header)  # a few rows per IP, then a count
        return throttled


def _too_many_requests(exc: RateLimited, media: Media = Media.JSON) -> Response:
    """HTTP 429 with ``Retry-After`` and the error in a GraphQL response body (with
    no ``data`` entry as application/graphql-response+json: nothing ran)."""
    error = GraphQLError(str(exc), extensions=exc.extensions)
    headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    body: dict[str, object] = {"errors": [error.formatted]}
    if media is not Media.GRAPHQL_RESPONSE:
        body = {"data": None, **body}
        media = Media.JSON
    content = COMPACT_JSON.encode(body)
    return Response(content, status_code=429, media_type=media.value, headers=headers)


class BadInputHTTP(HTTPException):
    """A request refused for a value no store takes: ``BAD_INPUT``, as the WebSocket
    protocols answer it, not ``BAD_REQUEST``."""


# The media types api/http_fast.py answers; the others go to Strawberry's view.
_FAST_MEDIA = frozenset({Media.JSON, Media.GRAPHQL_RESPONSE})


def _json_refusal(exc: HTTPException, media: Media) -> Response:
    """Strawberry's refusal of a request that is not a GraphQL request it can run,
    as a coded JSON error instead of its text/plain reason. A mutation over GET is
    405 with ``Allow: POST``, as the GraphQL-over-HTTP spec requires."""
    if isinstance(exc.__cause__, InvalidOperationTypeError):
        return refusal(405, exc.reason, METHOD_NOT_ALLOWED, media, {"Allow": "POST"})
    if exc.status_code == 405:
        return refusal(405, exc.reason, METHOD_NOT_ALLOWED, media, {"Allow": "GET, POST"})
    code = "BAD_INPUT" if isinstance(exc, BadInputHTTP) else BAD_REQUEST
    if exc.status_code == 404:
        code = "NOT_FOUND"
    return refusal(exc.status_code, exc.reason, code, media)


def _asks_for_ide(scope: Scope) -> bool:
    """A GET without a query: Strawberry serves GraphiQL to a browser (whose Accept
    names text/html) and refuses anything else itself."""
    return scope["method"] == "GET" and "query" not in QueryParams(scope["query_string"])


def _authorization(scope: Scope) -> str | None:
    """The first ``Authorization`` header, as Starlette's ``Headers.get`` finds it
    (ASGI servers give header names in lower case)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return None
