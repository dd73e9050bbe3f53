"""Queries and mutations over HTTP POST without Strawberry's per-request machinery.

Why: a publish spent about half of the server's CPU in Strawberry's HTTP view
around the resolver: request adapters, an extensions runner with a context manager
per hook per request, a middleware manager, result conversions. The work that
matters is small: find the (cached) validated document, execute it, log and mask
errors, emit events, encode. That is what this does, with the same pieces:

- the document comes from :class:`api.plan.Planner`, which parses and validates
  with the same token limit and rules as the schema's extensions, cached;
- execution is graphql-core's ``execute`` with Strawberry's execution context
  class, as Strawberry calls it, or for the one-root-field shape most requests
  have (a publish among them), :mod:`api.direct`, which does the same with
  graphql-core's and Strawberry's pieces but without the generic executor;
- errors are logged by the schema's ``process_errors`` (Strawberry's logger),
  events are emitted by the function the ``EmitEvents`` extension uses, and errors
  are masked by :func:`schema.masked` (the ``MaskErrors`` predicate and message),
  including an exception outside any resolver, which Strawberry's own path would
  return unmasked (``GraphQLView.process_result`` masks those too);
- the response body is encoded like Strawberry's view encodes it.

The view calls it only for requests that accept ``application/json`` or
``application/graphql-response+json`` (``api/media.py`` negotiates, once); the
answer has that media type and, for a request error as the latter (here: variables
that do not coerce), status 400 and no ``data`` entry, as the view answers it.

Anything else is left to Strawberry, with the body replayed: GET, other content
types, batches, documents that fail to parse or validate, an unknown operation
name, subscriptions (SSE and multipart). ``tests/integration/test_http_fast.py``
sends the same requests to a server with and without this path and requires the
same status, content type and body. It is the ``http`` path of ``api/accel``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError, OperationType, execute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from strawberry.execution import optimized_is_awaitable
from strawberry.schema import Schema
from strawberry.schema._graphql_core import execution_context_class_kwargs
from strawberry.types.graphql import OperationType as StrawberryOperationType

from api.encoding import COMPACT_JSON, suspect, unsafe_text
from api.media import Media, status_for
from api.metrics import Metrics
from api.plan import Planner
from api.plan import Request as PlannedRequest
from schema.context import Context
from schema.errors import masked
from schema.event_extension import emit_operation_events

if TYPE_CHECKING:
    from api.graphql import GraphQLView

_OPERATION_TYPES = {
    OperationType.QUERY: StrawberryOperationType.QUERY,
    OperationType.MUTATION: StrawberryOperationType.MUTATION,
}


class FastHTTP:
    def __init__(
        self,
        view: GraphQLView,
        schema: Schema,
        planner: Planner,
        metrics: Metrics,
    ) -> None:
        self._view = view
        self._schema = schema
        self._planner = planner
        self._executor = execution_context_class_kwargs(schema.execution_context_class)
        self._metrics = metrics

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, media: Media
    ) -> Receive | None:
        """Answer the request as ``media``, or return a ``receive`` that replays it
        for Strawberry."""
        if not _is_json(scope):
            return receive
        body = await _read_body(receive)
        replay = _replay(body, receive)
        try:
            payload = json.loads(body)
        except ValueError:
            return replay
        if suspect(body) and unsafe_text(payload):
            return replay  # Strawberry's view answers 400 (GraphQLView.parse_json)
        prepared = self._planner.operation(payload)
        if prepared is None:
            return replay
        # Its receive replays the body, should anything in a resolver read it.
        context = await self._view.get_context(Request(scope, replay), response=None)
        if prepared.operation.operation is OperationType.MUTATION:
            await self._view.admit_mutation(context, prepared.operation)  # 429 over the rate
        data, errors = await self._execute(prepared, context)
        if errors:
            self._schema.process_errors(errors)
        emit_operation_events(
            context,
            _OPERATION_TYPES[prepared.operation.operation],
            prepared.document,
            prepared.operation_name,
            errors,
        )
        shown = [masked(e) for e in errors]
        status = status_for(media, data, shown)
        response: dict[str, Any] = {"data": data} if status == 200 else {}
        if shown:
            response["errors"] = [e.formatted for e in shown]
        (self._metrics.http_fast if prepared.direct is None else self._metrics.http_direct).inc()
        content = COMPACT_JSON.encode(response)
        await Response(content, status_code=status, media_type=media.value)(scope, receive, send)
        return None

    async def _execute(
        self, prepared: PlannedRequest, context: Context
    ) -> tuple[dict[str, Any] | None, list[GraphQLError]]:
        try:
            if prepared.direct is not None:
                return await prepared.direct.execute(
                    self._schema._schema, context, prepared.variables, prepared.extensions
                )
            result = execute(
                self._schema._schema,
                prepared.document,
                root_value=None,
                context_value=context,
                variable_values=prepared.variables,
                operation_name=prepared.operation_name,
                is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
                operation_extensions=prepared.extensions,
                **self._executor,
            )
            if optimized_is_awaitable(result):
                result = await result  # type: ignore[misc]
        except Exception as exc:  # as Strawberry does: an error in the body, masked
            error = (
                exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
            )
            return None, [error]
        return result.data, list(result.errors or ())  # type: ignore[union-attr]


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: Receive) -> bytes:
    """The whole request body, as Starlette's ``Request.body`` reads it.

    Why not that: its async generator and ``aclosing`` around a body that arrives
    in one message cost ~3% of a publish.
    """
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, original: Receive) -> Receive:
    """The body once more, then whatever the server says next (a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive
