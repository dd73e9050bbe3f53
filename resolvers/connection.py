"""A WebSocket connection's own token: replace it in-band, keeping its subscriptions.

Why in-band: a connection lives until its token's ``exp`` plus the leeway and is
then closed (4403 ``token expired``); reconnecting to go on means resubscribing
everything and resuming each channel with ``since``. Sending a fresh token over the
same socket moves the deadline instead, and nothing else changes.

The new token must name the same holder (``sub``, ``inst``, ``role``) and grant at
least the departments and classrooms of the current one: the open subscriptions
were authorized under those claims and are not checked again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import strawberry
from starlette.websockets import WebSocket

from api.auth import AuthError
from db import repo
from resolvers.access import refuse
from resolvers.emit import emit
from schema.connection import TokenRefresh
from schema.context import Context
from schema.errors import BadInput, Forbidden, Unauthenticated
from streams.acl import Viewer

ACTION = "refreshConnectionToken"
TARGET = "websocket"


def narrowed(current: Viewer, new: Viewer) -> str | None:
    """Why ``new`` may not stand in for ``current`` on an open connection, or None."""
    for claim, old, now in (
        ("sub", current.user_id, new.user_id),
        ("inst", current.institution, new.institution),
        ("role", current.role, new.role),
    ):
        if old != now:
            return f"the new token's {claim!r} differs from this connection's"
    if not (new.departments >= current.departments and new.classrooms >= current.classrooms):
        return (
            "the new token grants fewer departments or classrooms than this connection's "
            "subscriptions were authorized with; reconnect with it"
        )
    return None


def _jwt(value: str) -> str:
    """The token itself; the ``Bearer`` prefix of ``connection_init`` is allowed too."""
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else value.strip()


async def refresh_connection_token(
    info: strawberry.Info[Context],
    token: Annotated[
        str,
        strawberry.argument(
            description=(
                "The new JWT (a `Bearer ` prefix is allowed): same sub, inst and role, and "
                "at least the departments and classrooms of the current one."
            )
        ),
    ],
) -> TokenRefresh:
    """Run this WebSocket connection on ``token`` from now on: a new deadline, the
    same subscriptions. Refused, the connection keeps its current token."""
    ctx = info.context
    websocket = ctx.request
    if not isinstance(websocket, WebSocket):
        raise BadInput(
            "refreshConnectionToken replaces a WebSocket connection's token; over HTTP "
            "every request carries its own in Authorization"
        )
    current = ctx.require_viewer()
    expiry = ctx.expiry
    if expiry is not None and expiry.when() <= asyncio.get_running_loop().time():
        # The expiry timer has fired: the close is under way.
        raise Unauthenticated("this connection's token has expired; reconnect")
    services = ctx.services
    try:
        new = services.tokens.verify(_jwt(token))
    except AuthError as exc:
        services.metrics.auth_failures.labels(transport="websocket").inc()
        await repo.audit(ctx.sessions, ctx.actor, ACTION, TARGET, "failed", {"reason": exc.reason})
        raise Unauthenticated(exc.reason) from exc
    reason = narrowed(current, new)
    if reason is not None:
        detail = {"claimed": new.user_id, "claimedInstitution": new.institution}
        await refuse(ctx, ACTION, TARGET, Forbidden(reason), detail)
    # No await from here to the new timer: the old one cannot fire in between.
    if expiry is not None:
        expiry.cancel()
    ctx.viewer = new
    deadline = services.tokens.deadline(new)
    ctx.expiry = services.connections.expire_at(websocket, deadline)
    assert new.expires_at is not None and deadline is not None  # exp is a required claim
    closes_at = datetime.fromtimestamp(deadline, UTC)
    emit(services, new, "auth.refresh", {"transport": "websocket"})
    detail = {"expiresAt": new.expires_at.isoformat()}
    await repo.audit(ctx.sessions, ctx.actor, ACTION, TARGET, "ok", detail)
    return TokenRefresh(expires_at=new.expires_at, closes_at=closes_at)
