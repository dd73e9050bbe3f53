"""The ``/graphql`` lane: HTTP and WebSocket requests for the GraphQL view skip
Starlette's router and exception middleware (a fast path, see ``api/accel``).

Guarded because it reads the route path with ``starlette._utils.get_route_path``
(a private helper, so that a mounted app's ``root_path`` is handled exactly as the
router handles it). With the path off, the router serves ``/graphql`` as usual.
"""

from __future__ import annotations

from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send


class WebSocketLane:
    """ASGI middleware: hand requests for ``path`` straight to ``endpoint``.

    The direct hand-off skips Starlette's exception middleware and router, whose
    coroutine frames every open subscription otherwise keeps suspended for its
    whole life (~1.8 KB per connection) and which do nothing for a WebSocket the
    GraphQL view owns.

    HTTP requests for ``path`` take the same lane: the router would only match the
    path and call the same endpoint, and its exception middleware has nothing to
    catch there (the view answers its own errors). In process, those two layers
    were about 5% of a publish's CPU.
    """

    def __init__(self, app: ASGIApp, path: str, endpoint: ASGIApp) -> None:
        self.app = app
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and get_route_path(scope) == self.path:
            await self.endpoint(scope, receive, send)
            return
        await self.app(scope, receive, send)
