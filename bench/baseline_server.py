"""The in-run baseline: plain Strawberry + broadcaster, written the naive way.

Why it exists: absolute numbers on a shared 2-core machine drift from run to run,
so bench/fanout.py drives this server and ours in the same run with the same
client and reports ratios. It answers the *identical* subscription document and
publish mutation (same field names, same ``PublishAnnouncementInput``), checks
the same HS256 JWT on HTTP and in ``connection_init``, and fans out the way the
Strawberry docs suggest: one ``broadcast.subscribe()`` queue and one generator
per subscriber, so every message is decoded, executed and encoded per subscriber.

It deliberately has no database, history, ACL or metrics: it is the cost floor
of "Strawberry + broadcaster", not a second implementation of our server.

Run: ``python bench/baseline_server.py --port 8100 [--workers N] [--redis-url URL]``
(env ``EDUMATRIX_JWT_SECRET`` is the HS256 secret, as for ours).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import jwt
import strawberry
import uvicorn
from broadcaster import Broadcast
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UnsetType

REDIS_ENV = "BENCH_BASELINE_REDIS_URL"  # env, because uvicorn workers re-import us


@strawberry.enum
class Priority(Enum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


@strawberry.type
class Announcement:
    id: strawberry.ID
    channel: str
    author_id: strawberry.ID
    title: str
    body: str
    priority: Priority
    created_at: datetime


@strawberry.type
class ChannelEvent:
    offset: int
    epoch: str
    channel: str
    kind: str
    published_at: datetime
    recovered: bool
    announcement: Announcement | None


@strawberry.input
class PublishAnnouncementInput:
    channel: str
    title: str
    body: str
    priority: Priority = Priority.NORMAL


class State:
    """Process-wide objects; built in the lifespan so each uvicorn worker has its own."""

    broadcast: Broadcast
    redis: Redis | None = None
    secret: str = ""
    epoch = "baseline"
    local_offsets: dict[str, itertools.count[int]] = {}
    ids = itertools.count(1)


def _verify(header: object) -> dict[str, Any]:
    if not isinstance(header, str) or not header.lower().startswith("bearer "):
        raise PermissionError("missing Authorization: Bearer <token>")
    claims: dict[str, Any] = jwt.decode(
        header[7:].strip(), State.secret, algorithms=["HS256"], options={"require": ["exp"]}
    )
    return claims


async def _next_offset(channel: str) -> int:
    """Per-channel offsets like ours: INCR in Redis when workers share it, else local."""
    if State.redis is not None:
        return int(await State.redis.incr(f"bench-baseline:offset:{channel}"))
    counter = State.local_offsets.setdefault(channel, itertools.count(1))
    return next(counter)


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> bool:
        return True


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def publish_announcement(
        self, info: strawberry.Info, input: PublishAnnouncementInput
    ) -> Announcement:
        claims = info.context["claims"]
        if claims is None:
            raise PermissionError("not authenticated")
        now = datetime.now(UTC)
        announcement = {
            "id": str(next(State.ids)),
            "channel": input.channel,
            "authorId": claims["sub"],
            "title": input.title,
            "body": input.body,
            "priority": input.priority.value,
            "createdAt": now.isoformat(),
        }
        envelope = {
            "offset": await _next_offset(input.channel),
            "epoch": State.epoch,
            "publishedAt": int(time.time() * 1000),
            "channel": input.channel,
            "kind": "announcement",
            "data": {"announcement": announcement},
        }
        await State.broadcast.publish(input.channel, json.dumps(envelope))
        return _announcement(announcement)


def _announcement(data: dict[str, Any]) -> Announcement:
    return Announcement(
        id=strawberry.ID(data["id"]),
        channel=data["channel"],
        author_id=strawberry.ID(data["authorId"]),
        title=data["title"],
        body=data["body"],
        priority=Priority(data["priority"]),
        created_at=datetime.fromisoformat(data["createdAt"]),
    )


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def channel(self, name: str) -> AsyncGenerator[ChannelEvent, None]:
        # The naive shape under test: a queue and a generator per subscriber, and the
        # message decoded and turned into objects again for every one of them.
        async with State.broadcast.subscribe(name) as subscriber:
            async for event in subscriber:  # type: ignore[union-attr]
                if event is None:
                    return
                env = json.loads(event.message)
                data = env["data"].get("announcement")
                yield ChannelEvent(
                    offset=env["offset"],
                    epoch=env["epoch"],
                    channel=env["channel"],
                    kind=env["kind"],
                    published_at=datetime.fromtimestamp(env["publishedAt"] / 1000, UTC),
                    recovered=True,
                    announcement=_announcement(data) if data else None,
                )


class View(GraphQL[dict[str, Any], None]):
    """The same JWT check as ours: Bearer header on HTTP, ``connection_init`` on WS."""

    async def get_context(self, request: Request | WebSocket, response: Any) -> dict[str, Any]:
        claims = None
        if isinstance(request, Request) and "authorization" in request.headers:
            try:
                claims = _verify(request.headers["authorization"])
            except (PermissionError, jwt.InvalidTokenError):
                claims = None
        return {"request": request, "claims": claims}

    async def on_ws_connect(self, context: dict[str, Any]) -> UnsetType | dict[str, object] | None:
        params = context.get("connection_params") or {}
        try:
            context["claims"] = _verify(params.get("authorization"))
        except (PermissionError, jwt.InvalidTokenError) as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from exc
        return UnsetType()


def create_app() -> Starlette:
    State.secret = os.environ.get("EDUMATRIX_JWT_SECRET", "")
    redis_url = os.environ.get(REDIS_ENV) or None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        State.broadcast = Broadcast(redis_url or "memory://")
        State.redis = Redis.from_url(redis_url) if redis_url else None
        await State.broadcast.connect()
        try:
            yield
        finally:
            await State.broadcast.disconnect()
            if State.redis is not None:
                await State.redis.aclose()

    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)
    view = View(schema)
    routes = [
        Route("/readyz", readyz),
        Route("/graphql", view),
        WebSocketRoute("/graphql", view),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis-url", default=None, help="shared bus for --workers > 1")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    if args.workers > 1 and not args.redis_url:
        parser.error("--workers > 1 needs --redis-url (a shared bus)")
    if args.redis_url:
        os.environ[REDIS_ENV] = args.redis_url
    # The same uvicorn settings as `edumatrix serve`, so only the app differs.
    uvicorn.run(
        "baseline_server:create_app",
        factory=True,
        app_dir=str(Path(__file__).resolve().parent),
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )


if __name__ == "__main__":
    main()
