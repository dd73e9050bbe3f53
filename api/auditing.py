"""What the GraphQL view audits about requests and connections themselves (the
resolvers audit what is done through them): failed authentications, WebSocket
connections opening and closing, and the request id every row and response shares.

- Every HTTP request and WebSocket connection gets an id (``api.clientinfo.request_id``)
  that goes into each of its audit rows and, for HTTP, the ``X-Request-Id`` header.
- A failed authentication has no actor (the token was not verified); what the
  token claims is kept in ``detail["claimed"]`` only, with the client's IP. Past
  a few per minute from one IP they are counted, not written
  (``db.audit_trail.AuditTrail.record_or_count``).
- An accepted WebSocket gets a ``connect`` row and, when it ends, a ``disconnect``
  row with its duration, its close code and who closed it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.types import Message, Receive, Scope, Send

from api.clientinfo import request_id
from schema.context import Context

CLOSE_KEY = "edumatrix.ws_close"
CLAIM_MAX = 64  # claims are attacker-chosen text: ids are at most 64 characters
WEBSOCKET = "websocket"


def with_request_id(scope: Scope, send: Send) -> Send:
    """``send`` that adds ``X-Request-Id`` to the response's headers."""
    header = (b"x-request-id", request_id(scope).encode())

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return sending


@dataclass(slots=True)
class CloseWatch:
    """How a WebSocket ended: the first close code either side sent, and by whom."""

    started: float
    code: int | None = None
    by: str | None = None

    @classmethod
    def install(cls, scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
        """Keep a watch in ``scope`` and return ``receive``/``send`` that feed it.

        Why wrap: neither Starlette nor Strawberry keeps the close code, and closes
        come from many places (Strawberry's protocol errors, our expiry, slow
        consumer and drain closes, the client). The multiplexed fan-out writes
        frames to the transport directly, so the extra call is not per delivery
        there; elsewhere it is one small await per frame.
        """
        watch = scope[CLOSE_KEY] = cls(time.monotonic())

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                watch.closed(message.get("code", 1005), "client")
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "websocket.close":
                watch.closed(message.get("code", 1000), "server")
            await send(message)

        return receiving, sending

    def closed(self, code: int, by: str) -> None:
        if self.code is None:
            self.code, self.by = int(code), by


def claimed(header: str | None) -> dict[str, str]:
    """What a refused token says about who sent it (``sub``, ``inst``), unverified:
    for the audit row's ``detail`` only, never as its actor."""
    token = (header or "").strip()
    scheme, _, token = token.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return {}
    try:
        claims: dict[str, Any] = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    found = {}
    for claim, key in (("sub", "claimed"), ("inst", "claimedInstitution")):
        value = claims.get(claim)
        if isinstance(value, str) and value:
            found[key] = value[:CLAIM_MAX]
    return found


async def auth_failed(context: Context, transport: str, reason: str, header: str | None) -> None:
    """The failed authentication's row: no actor, the client's IP, the claim."""
    detail: dict[str, Any] = {"reason": reason, **claimed(header)}
    await context.services.audit.record_or_count(
        context.actor, "authenticate", transport, "failed", detail
    )


def ws_opened(context: Context) -> None:
    """The accepted connection's row (queued: the ack does not wait for it)."""
    context.services.audit.record_later(context.actor, "connect", WEBSOCKET, "ok")


def ws_closed(context: Context, protocol: str) -> None:
    """The ``disconnect`` row of a connection that had a ``connect`` row."""
    if context.viewer is None:
        return
    watch = context.request.scope.get(CLOSE_KEY)
    detail: dict[str, Any] = {"protocol": protocol}
    if isinstance(watch, CloseWatch):
        detail["durationMs"] = round((time.monotonic() - watch.started) * 1000)
        detail["code"] = watch.code
        detail["closedBy"] = watch.by
    context.services.audit.record_later(context.actor, "disconnect", WEBSOCKET, "ok", detail)


async def limit_hit(context: Context, limit: str) -> None:
    """A refusal by an admission limit (``api.admission``): a few rows per client
    IP and minute, then one count row, so a flood cannot fill the log either."""
    await context.services.audit.record_or_count(context.actor, "limit", limit, "limited")
