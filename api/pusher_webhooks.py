"""Pusher webhooks: ``channel_occupied``, ``channel_vacated``, ``member_added`` and
``member_removed``, POSTed to each app's URL and signed as Pusher signs them.

Body ``{"time_ms": …, "events": [{"name": …, "channel": …[, "user_id": …]}]}``,
headers ``X-Pusher-Key`` (the app key) and ``X-Pusher-Signature`` (hex HMAC-SHA256
of the body with the app secret). Events are batched for up to
:data:`BATCH_SECONDS`; a batch that fails (connection error, timeout, 5xx or 429) is
retried with doubling delays, :data:`ATTEMPTS` times in all, then dropped and
counted (``edumatrix_pusher_webhooks_total{outcome="dropped"}``): a receiver that
is down for longer misses events, as with Pusher, and should re-read state through
the HTTP API. A 4xx other than 429 is the receiver refusing: dropped at once.

Each event is sent by one process: occupancy transitions come out of one atomic
script (``streams.pusher_occupancy``); presence changes are heard by every process,
and a Redis ``SET NX`` per event (:meth:`Occupancy.claim_event`) elects the sender.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import httpx
import structlog
from prometheus_client import CollectorRegistry, Counter

from api.pusher_apps import Apps, PusherApp, sign
from streams.channels import ChannelError, parse_channel
from streams.presence import EventType, PresenceEvent
from streams.pusher_names import Access, to_pusher
from streams.pusher_occupancy import Occupancy

log = structlog.get_logger(__name__)

BATCH_SECONDS = 0.25
MAX_BATCH = 100
ATTEMPTS = 6  # 1 + retries after 1, 2, 4, 8, 16 s
TIMEOUT_SECONDS = 5.0


def parse_webhooks(entries: list[str], apps: Apps) -> dict[str, str]:
    """``app_id=url`` entries: the URL of each app's webhooks, or ValueError."""
    urls: dict[str, str] = {}
    for entry in entries:
        app_id, sep, url = entry.partition("=")
        app_id, url = app_id.strip(), url.strip()
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"each Pusher webhook is app_id=http(s)://…, not {entry!r}")
        if apps.by_id(app_id) is None:
            raise ValueError(f"Pusher webhook for unknown app {app_id!r}")
        urls[app_id] = url
    return urls


class Webhooks:
    def __init__(self, apps: Apps, urls: Mapping[str, str], registry: CollectorRegistry) -> None:
        self._apps = apps
        self._urls = dict(urls)
        self._queues: dict[str, list[dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._occupancy: Occupancy | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._sent = Counter(
            "edumatrix_pusher_webhooks",
            "Pusher webhook events by outcome (sent, dropped)",
            ["outcome"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return bool(self._urls)

    async def start(self, occupancy: Occupancy) -> None:
        self._occupancy = occupancy
        if self._urls:
            self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS)
            self._task = asyncio.create_task(self._run(), name="pusher-webhooks")

    async def close(self) -> None:
        for task in list(self._pending):
            with suppress(asyncio.CancelledError):
                await task
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            await self._flush(attempts=1)  # what is queued, once
        if self._client is not None:
            await self._client.aclose()

    # -- what happened ---------------------------------------------------------------

    def occupancy_changed(self, app_id: str, name: str, event: str) -> None:
        self._queue(app_id, {"name": event, "channel": name})

    def presence_changed(self, event: PresenceEvent) -> None:
        """A presence JOIN or LEAVE: ``member_added``/``member_removed`` on the
        ``presence-`` name of the channel, for the apps of its institution."""
        if not self._urls or event.type is EventType.STATUS:
            return
        key, _, institution = event.channel.partition("@")  # system:status@inst
        try:
            channel = parse_channel(key)
        except ChannelError:
            return
        home = channel.institution or institution
        apps = [a for a in self._apps.all() if a.institution == home and a.app_id in self._urls]
        if not apps:
            return
        task = asyncio.get_running_loop().create_task(self._member(event, channel, apps))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _member(self, event: PresenceEvent, channel: Any, apps: list[PusherApp]) -> None:
        occupancy = self._occupancy
        if occupancy is None:
            return
        try:
            if not await occupancy.claim_event(f"{event.channel}:{event.version}:{event.type}"):
                return  # another process reports it
        except Exception as exc:
            log.warning("pusher.webhook_claim_failed", error=repr(exc))
            return
        name = "member_added" if event.type is EventType.JOIN else "member_removed"
        pusher_name = to_pusher(channel, Access.PRESENCE)
        for app in apps:
            self._queue(
                app.app_id, {"name": name, "channel": pusher_name, "user_id": event.member.user_id}
            )

    def _queue(self, app_id: str, event: dict[str, Any]) -> None:
        if app_id not in self._urls:
            return
        self._queues.setdefault(app_id, []).append(event)
        self._wake.set()

    # -- sending ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_SECONDS)  # let the batch fill
            self._wake.clear()
            await self._flush(attempts=ATTEMPTS)

    async def _flush(self, attempts: int) -> None:
        queues, self._queues = self._queues, {}
        sends = []
        for app_id, events in queues.items():
            app = self._apps.by_id(app_id)
            if app is None:
                continue
            for start in range(0, len(events), MAX_BATCH):
                sends.append(self._deliver(app, events[start : start + MAX_BATCH], attempts))
        await asyncio.gather(*sends)

    async def _deliver(self, app: PusherApp, events: list[dict[str, Any]], attempts: int) -> None:
        assert self._client is not None
        body = json.dumps({"time_ms": int(time.time() * 1000), "events": events}).encode()
        headers = {
            "content-type": "application/json",
            "x-pusher-key": app.key,
            "x-pusher-signature": sign(app.secret, body.decode()),
        }
        delay = 1.0
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post(
                    self._urls[app.app_id], content=body, headers=headers
                )
                if response.status_code < 300:
                    self._sent.labels(outcome="sent").inc(len(events))
                    return
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    log.warning(
                        "pusher.webhook_refused", app=app.app_id, status=response.status_code
                    )
                    break
                why = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                why = repr(exc)
            if attempt < attempts:
                log.info("pusher.webhook_retry", app=app.app_id, attempt=attempt, error=why)
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("pusher.webhook_dropped", app=app.app_id, events=len(events))
        self._sent.labels(outcome="dropped").inc(len(events))
