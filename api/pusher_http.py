"""Pusher's HTTP side: the auth endpoints pusher-js and Laravel Echo call, and the
HTTP API server libraries call.

* ``POST /pusher/auth`` (``socket_id``, ``channel_name``; form or JSON, the caller's
  JWT as ``Authorization: Bearer``): the channel signature, only when
  ``streams.acl`` lets the token's viewer read the channel; for ``presence-``
  also ``channel_data`` (user id, display name, role).
* ``POST /pusher/user-auth`` (``socket_id``): the ``pusher:signin`` signature over
  ``user_data`` carrying the viewer's claims, so a signed-in socket is held to
  the same ACL and expires with the token.
* ``POST /apps/{app_id}/events`` and ``/batch_events``: publish on the bus as a
  service of the app's institution may (ACL, mutation rate, audit); each event
  gets an offset and is kept in history like every message.
* ``GET /apps/{app_id}/channels/{channel}`` and ``.../users``: occupancy and
  presence members, deployment-wide, from the presence service.

Which app an auth request is for: the form field ``app_key`` (pusher-js:
``channelAuthorization.params``), else the only app configured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from api.auth import AuthError
from api.clientinfo import client_ip, user_agent
from api.pusher import PusherEndpoint
from api.pusher_apps import (
    Apps,
    PusherApp,
    SignatureError,
    channel_auth,
    user_auth,
    valid_socket_id,
    verify_request,
)
from api.settings import Settings
from db import repo
from db.repo import Actor
from schema.context import Services
from schema.errors import RateLimited
from streams.acl import Action, Role, Viewer, is_allowed, presence_key
from streams.channels import ChannelError, ChannelKind
from streams.presence import Snapshot
from streams.pusher_names import Access, PusherChannel, from_pusher
from streams.pusher_occupancy import Occupancy

log = structlog.get_logger(__name__)

MAX_CHANNELS_PER_EVENT = 100
MAX_BATCH = 10
MAX_EVENT_NAME = 200
RESERVED_PREFIXES = ("pusher:", "pusher_internal:", "client-")


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(exc: Refused) -> Response:
    # Pusher answers errors as plain text; server libraries raise it as the message.
    return PlainTextResponse(str(exc), status_code=exc.status)


@dataclass
class PusherHTTP:
    settings: Settings
    apps: Apps
    endpoint: PusherEndpoint

    def occupancy(self) -> Occupancy:
        return self.endpoint.occupancy

    def routes(self) -> list[Route]:
        return [
            Route("/pusher/auth", self.channel_auth, methods=["POST"]),
            Route("/pusher/user-auth", self.user_auth, methods=["POST"]),
            Route("/apps/{app_id}/events", self.events, methods=["POST"]),
            Route("/apps/{app_id}/batch_events", self.batch_events, methods=["POST"]),
            Route("/apps/{app_id}/channels", self.channels, methods=["GET"]),
            Route("/apps/{app_id}/channels/{channel}", self.channel_info, methods=["GET"]),
            Route("/apps/{app_id}/channels/{channel}/users", self.channel_users, methods=["GET"]),
        ]

    # -- auth endpoints ------------------------------------------------------------

    async def _auth_request(
        self, request: Request
    ) -> tuple[Services, Viewer, PusherApp, dict[str, str]]:
        services: Services = request.state.services
        form = await _fields(request)
        header = request.headers.get("authorization")
        try:
            viewer = services.tokens.verify_header(header)
        except AuthError as exc:
            ip = client_ip(request.scope, services.trusted_proxies)
            throttled = await request.app.state.admission.auth_failed(ip)
            if throttled is None:
                actor = Actor(ip=ip, user_agent=user_agent(request.scope))
                await services.audit.record_or_count(
                    actor, "authenticate", "pusher", "failed", {"reason": exc.reason}
                )
            raise Refused(401, f"unauthenticated: {exc.reason}") from None
        key = form.get("app_key")
        app = self.apps.by_key(key) if key else self.apps.only()
        if app is None:
            raise Refused(404, "no such Pusher app: pass app_key (one of the configured apps)")
        if viewer.institution != app.institution and viewer.role is not Role.PLATFORM:
            raise Refused(403, "this app belongs to another institution")
        if not valid_socket_id(form.get("socket_id")):
            raise Refused(400, "socket_id must look like 123.456 (from connection_established)")
        return services, viewer, app, form

    async def channel_auth(self, request: Request) -> Response:
        try:
            services, viewer, app, form = await self._auth_request(request)
            name = form.get("channel_name") or ""
            try:
                parsed = from_pusher(name)
            except ChannelError as exc:
                raise Refused(400, str(exc)) from None
            if parsed.access not in (Access.PRIVATE, Access.PRESENCE):
                raise Refused(400, "only private- and presence- channels are authorized here")
            if not is_allowed(viewer, parsed.channel, Action.SUBSCRIBE):
                await services.audit.record(
                    _actor(request, services, viewer), "pusher.auth", parsed.channel.name, "denied"
                )
                raise Refused(403, f"not allowed to subscribe to {name!r}")
        except Refused as exc:
            return _error(exc)
        socket_id = form["socket_id"]
        if parsed.access is Access.PRESENCE:
            info = {
                "displayName": await _display_name(services, viewer),
                "role": viewer.role.value,
                "institution": viewer.institution,
            }
            channel_data = json.dumps({"user_id": viewer.user_id, "user_info": info})
            return JSONResponse(
                {
                    "auth": channel_auth(app, socket_id, name, channel_data),
                    "channel_data": channel_data,
                }
            )
        return JSONResponse({"auth": channel_auth(app, socket_id, name, None)})

    async def user_auth(self, request: Request) -> Response:
        try:
            services, viewer, app, form = await self._auth_request(request)
        except Refused as exc:
            return _error(exc)
        deadline = services.tokens.deadline(viewer)
        user_data = json.dumps(
            {
                "id": viewer.user_id,
                "user_info": {
                    "displayName": await _display_name(services, viewer),
                    "role": viewer.role.value,
                    "institution": viewer.institution,
                    "departments": sorted(viewer.departments),
                    "classrooms": sorted(viewer.classrooms),
                    "exp": None if deadline is None else int(deadline),
                },
            }
        )
        return JSONResponse(
            {"auth": user_auth(app, form["socket_id"], user_data), "user_data": user_data}
        )

    # -- the HTTP API --------------------------------------------------------------

    async def _api_request(self, request: Request) -> tuple[Services, PusherApp, bytes]:
        services: Services = request.state.services
        app = self.apps.by_id(request.path_params["app_id"])
        if app is None:
            raise Refused(404, "unknown app_id")
        body = await request.body()
        try:
            verify_request(app, request.method, request.url.path, request.query_params, body)
        except SignatureError as exc:
            ip = client_ip(request.scope, services.trusted_proxies)
            actor = Actor(ip=ip, user_agent=user_agent(request.scope))
            await services.audit.record_or_count(
                actor,
                "authenticate",
                "pusher-api",
                "failed",
                {"reason": str(exc), "app": app.app_id},
            )
            raise Refused(401, str(exc)) from None
        return services, app, body

    async def events(self, request: Request) -> Response:
        try:
            services, app, body = await self._api_request(request)
            event = _json_object(body)
            channels = event.get("channels")
            if channels is None and isinstance(event.get("channel"), str):
                channels = [event["channel"]]
            trigger = await self._check(request, services, app, event, channels)
            result = await self._publish(request, services, app, [trigger])
        except Refused as exc:
            return _error(exc)
        info = event.get("info")
        if isinstance(info, str) and info:
            return JSONResponse(
                {"channels": await self._infos(services, app, trigger.channels, info)}
            )
        return JSONResponse(result)

    async def batch_events(self, request: Request) -> Response:
        try:
            services, app, body = await self._api_request(request)
            batch = _json_object(body).get("batch")
            if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_BATCH:
                raise Refused(400, f"batch must be a list of 1 to {MAX_BATCH} events")
            triggers = []
            for item in batch:
                if not isinstance(item, dict) or not isinstance(item.get("channel"), str):
                    raise Refused(400, "each batch event needs a channel")
                triggers.append(await self._check(request, services, app, item, [item["channel"]]))
            await self._publish(request, services, app, triggers)
        except Refused as exc:
            return _error(exc)
        return JSONResponse({"batch": [{} for _ in triggers]})

    async def _check(
        self,
        request: Request,
        services: Services,
        app: PusherApp,
        event: dict[str, Any],
        channels: Any,
    ) -> Trigger:
        """Validate one event and authorize each of its channels (nothing is published
        unless every one passes)."""
        name, data, socket_id = event.get("name"), event.get("data"), event.get("socket_id")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_EVENT_NAME:
            raise Refused(400, f"name must be a string of 1 to {MAX_EVENT_NAME} characters")
        if name.startswith(RESERVED_PREFIXES):
            raise Refused(
                400, f"event names starting with {', '.join(RESERVED_PREFIXES)} are reserved"
            )
        if not isinstance(data, str):
            raise Refused(400, "data must be a string (JSON-encode objects)")
        if len(data.encode()) > self.settings.pusher_max_event_bytes:
            raise Refused(413, f"data larger than {self.settings.pusher_max_event_bytes} bytes")
        if socket_id is not None and not valid_socket_id(socket_id):
            raise Refused(400, "socket_id must look like 123.456")
        if (
            not isinstance(channels, list)
            or not 1 <= len(channels) <= MAX_CHANNELS_PER_EVENT
            or not all(isinstance(c, str) for c in channels)
        ):
            raise Refused(400, f"channels must be a list of 1 to {MAX_CHANNELS_PER_EVENT} names")
        parsed: list[PusherChannel] = []
        for channel in channels:
            try:
                one = from_pusher(channel)
            except ChannelError as exc:
                raise Refused(400, str(exc)) from None
            home = None
            if one.channel.kind is ChannelKind.USER and one.channel.key is not None:
                home = await repo.user_institution(services.sessions, one.channel.key)
            if not is_allowed(app.service, one.channel, Action.PUBLISH, user_institution=home):
                await services.audit.record(
                    _app_actor(request, services, app), "pusher.trigger", one.channel.name, "denied"
                )
                raise Refused(403, f"app {app.app_id} may not publish to {channel!r}")
            parsed.append(one)
        return Trigger(name, data, socket_id, parsed)

    async def _publish(
        self, request: Request, services: Services, app: PusherApp, triggers: list[Trigger]
    ) -> dict[str, Any]:
        cost = sum(len(t.channels) for t in triggers)
        try:
            await request.app.state.admission.admit_mutation(app.service, cost)
        except RateLimited as exc:
            raise Refused(429, str(exc)) from None
        actor = _app_actor(request, services, app)
        published = services.metrics.published_kind("pusher")
        for trigger in triggers:
            body: dict[str, Any] = {"source": "pusher", "pusherData": trigger.data}
            if trigger.socket_id is not None:
                body["socketId"] = trigger.socket_id
            for channel in trigger.channels:
                try:
                    envelope = await services.bus.publish(channel.channel.name, trigger.name, body)
                except Exception as exc:
                    log.warning(
                        "pusher.trigger_failed", channel=channel.channel.name, error=repr(exc)
                    )
                    raise Refused(
                        503, "the bus is unavailable; nothing after this channel was published"
                    ) from None
                published.inc()
                services.audit.record_later(
                    actor,
                    "pusher.trigger",
                    channel.channel.name,
                    "ok",
                    {"event": trigger.name, "offset": envelope.offset, "epoch": envelope.epoch},
                )
        return {}

    async def _infos(
        self, services: Services, app: PusherApp, channels: list[PusherChannel], info: str
    ) -> dict[str, Any]:
        wanted = {part.strip() for part in info.split(",")}
        counts = (
            await self.occupancy().channels(app.app_id) if "subscription_count" in wanted else {}
        )
        found: dict[str, Any] = {}
        for channel in channels:
            entry: dict[str, Any] = {}
            if "user_count" in wanted and channel.access is Access.PRESENCE:
                entry["user_count"] = len((await _snapshot(services, channel)).members)
            if "subscription_count" in wanted:
                entry["subscription_count"] = counts.get(channel.pusher_name, 0)
            found[channel.pusher_name] = entry
        return found

    async def channel_info(self, request: Request) -> Response:
        try:
            services, app, _ = await self._api_request(request)
            channel = self._app_channel(app, request.path_params["channel"])
        except Refused as exc:
            return _error(exc)
        wanted = request.query_params.get("info", "").split(",")
        if "user_count" in wanted and channel.access is not Access.PRESENCE:
            return _error(Refused(400, "user_count is for presence- channels only"))
        counts = await self.occupancy().channels(app.app_id)
        subscriptions = counts.get(channel.pusher_name, 0)
        result: dict[str, Any] = {"occupied": subscriptions > 0}
        if "subscription_count" in wanted:
            result["subscription_count"] = subscriptions
        if "user_count" in wanted:
            result["user_count"] = len((await _snapshot(services, channel)).members)
        return JSONResponse(result)

    async def channels(self, request: Request) -> Response:
        """Occupied channels of the app (Pusher subscribers, deployment-wide)."""
        try:
            services, app, _ = await self._api_request(request)
        except Refused as exc:
            return _error(exc)
        prefix = request.query_params.get("filter_by_prefix", "")
        wanted = request.query_params.get("info", "").split(",")
        if "user_count" in wanted and not prefix.startswith("presence-"):
            return _error(Refused(400, "info=user_count needs filter_by_prefix=presence-"))
        counts = await self.occupancy().channels(app.app_id)
        found: dict[str, Any] = {}
        for name in sorted(counts):
            if not name.startswith(prefix):
                continue
            entry: dict[str, Any] = {}
            if "user_count" in wanted:
                entry["user_count"] = len((await _snapshot(services, from_pusher(name))).members)
            found[name] = entry
        return JSONResponse({"channels": found})

    async def channel_users(self, request: Request) -> Response:
        try:
            services, app, _ = await self._api_request(request)
            channel = self._app_channel(app, request.path_params["channel"])
            if channel.access is not Access.PRESENCE:
                raise Refused(400, "users are listed for presence- channels only")
        except Refused as exc:
            return _error(exc)
        snapshot = await _snapshot(services, channel)
        return JSONResponse({"users": [{"id": m.user_id} for m in snapshot.members]})

    def _app_channel(self, app: PusherApp, name: str) -> PusherChannel:
        try:
            channel = from_pusher(name)
        except ChannelError as exc:
            raise Refused(400, str(exc)) from None
        if not is_allowed(app.service, channel.channel, Action.SUBSCRIBE):
            raise Refused(403, f"app {app.app_id} may not read {name!r}")
        return channel


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    data: str
    socket_id: str | None
    channels: list[PusherChannel]


async def _snapshot(services: Services, channel: PusherChannel) -> Snapshot:
    # The app acts as a service of its institution: system:status presence is per
    # institution (presence_key), the app's own.
    viewer = Viewer(
        user_id="pusher-app", role=Role.SERVICE, institution=channel.channel.institution or ""
    )
    return await services.presence.snapshot(presence_key(channel.channel, viewer))


async def _fields(request: Request) -> dict[str, str]:
    """The auth request's fields: form-encoded (pusher-js, Echo) or JSON."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            obj = json.loads(await request.body())
        except ValueError:
            raise Refused(400, "body is not JSON") from None
        if not isinstance(obj, dict):
            raise Refused(400, "body must be a JSON object")
        return {k: v for k, v in obj.items() if isinstance(v, str)}
    # pusher-js and Echo send application/x-www-form-urlencoded: the standard
    # library reads it (Starlette's form parser would need python-multipart).
    try:
        text = (await request.body()).decode()
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8") from None
    return dict(parse_qsl(text, max_num_fields=20))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except ValueError:
        raise Refused(400, "body is not JSON") from None
    if not isinstance(obj, dict):
        raise Refused(400, "body must be a JSON object")
    return obj


async def _display_name(services: Services, viewer: Viewer) -> str:
    user = await repo.get_user(services.sessions, viewer.user_id)
    if user is not None and user.institution_id == viewer.institution:
        return user.display_name
    return viewer.user_id


def _actor(request: Request, services: Services, viewer: Viewer) -> Actor:
    ip = client_ip(request.scope, services.trusted_proxies)
    return Actor(
        viewer.user_id, viewer.role.value, viewer.institution, ip, user_agent(request.scope)
    )


def _app_actor(request: Request, services: Services, app: PusherApp) -> Actor:
    return _actor(request, services, app.service)
