"""Cross-origin pages in a real browser (Debian's chromium through Playwright).

A page served from another origin (a second port on 127.0.0.1) that is listed in
``EDUMATRIX_ALLOWED_ORIGINS`` queries with an ``Authorization`` header (a CORS
preflight), mutates, and subscribes over a WebSocket that receives the event its
mutation published. A page from an origin not on the list can read no response,
cannot get a preflighted mutation executed, and has its WebSocket refused.
The browser makes those decisions; ``tests/integration/test_cors.py`` checks the
headers behind them.

Why not ``tests.browser.offline_page``: with any request route registered,
Playwright answers CORS preflights itself, allowing everything, so the server's
own answer would never reach the browser. These pages run unrouted; everything
but loopback goes to a dead proxy (a port held bound, never listening), and every
request and WebSocket the page opens is still recorded.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page

from tests.browser import LOCAL_HOSTS, Requests, browser
from tests.integration.test_embedded_ws import MATH_101
from tests.server import ServerProcess, base_env, token

# The page's own JavaScript: fetch for HTTP, and graphql-transport-ws written out
# by hand (connection_init -> connection_ack, subscribe -> next..., complete), so
# the browser's WebSocket is used as it is, with nothing between it and the server.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>cross-origin client</title>
<script>
const ME = '{ me { id role } }';
const POSITION = 'query($name: String!) { channelPosition(name: $name) { offset epoch } }';
const PUBLISH = `mutation($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b"}) { id title }
}`;
const CHANNEL = `subscription($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) { offset epoch kind announcement { id title } }
}`;
const WAIT_MS = 10000;
const QUIET_MS = 300;

async function graphql(api, token, query, variables) {
  const response = await fetch(`${api}/graphql`, {
    method: 'POST',
    headers: {'Content-Type': 'application/json', Authorization: `Bearer ${token}`},
    body: JSON.stringify({query, variables}),
  });
  return {status: response.status, body: await response.json()};
}

function failure(promise) {
  return promise.then(
    (value) => ({value}),
    (error) => ({error: `${error.name}: ${error.message}`}),
  );
}

function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// One graphql-transport-ws subscription; resolves once it is acknowledged.
function subscribe(url, token, query, variables) {
  const ws = new WebSocket(url, 'graphql-transport-ws');
  const feed = {ws, events: [], messages: [], closed: null};
  let arrived;
  feed.first = new Promise((resolve) => { arrived = resolve; });
  const acked = new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify(
      {type: 'connection_init', payload: {authorization: `Bearer ${token}`}}));
    ws.onclose = (event) => {
      feed.closed = {code: event.code, reason: event.reason};
      reject(new Error(`closed ${event.code} ${event.reason}`));
    };
    ws.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === 'ping') return ws.send(JSON.stringify({type: 'pong'}));
      feed.messages.push(data.type);
      if (data.type === 'connection_ack') {
        ws.send(JSON.stringify({id: '1', type: 'subscribe', payload: {query, variables}}));
        resolve(feed);
      } else if (data.type === 'next') {
        feed.events.push(data.payload);
        arrived();
      }
    };
  });
  return within(WAIT_MS, 'connection_ack', acked);
}

window.allowedTour = async ({api, ws, channel, student, teacher, title}) => {
  const me = await graphql(api, student, ME);
  const position = await graphql(api, student, POSITION, {name: channel});
  const since = position.body.data.channelPosition;
  const feed = await subscribe(ws, student, CHANNEL, {name: channel, since});
  const published = await graphql(api, teacher, PUBLISH, {channel, title});
  await within(WAIT_MS, 'event', feed.first);
  await new Promise((resolve) => setTimeout(resolve, QUIET_MS));  // a duplicate shows here
  feed.ws.send(JSON.stringify({id: '1', type: 'complete'}));
  feed.ws.close(1000);
  return {
    me, since, published, protocol: feed.ws.protocol,
    events: feed.events, messages: feed.messages, closed: feed.closed,
  };
};

window.refusedTour = async ({api, ws, channel, teacher, title}) => {
  // A simple GET (no preflight): the server answers, the browser hides it.
  const get = await failure(fetch(`${api}/graphql?query=${encodeURIComponent('{ __typename }')}`));
  // A preflighted mutation: refused at the preflight, never sent.
  const post = await failure(graphql(api, teacher, PUBLISH, {channel, title}));
  const socket = await within(WAIT_MS, 'refused socket', new Promise((resolve) => {
    const attempt = new WebSocket(ws, 'graphql-transport-ws');
    let opened = false;
    attempt.onopen = () => { opened = true; attempt.close(1000); };
    attempt.onclose = (event) => resolve({opened, code: event.code});
  }));
  return {get, post, socket};
};
</script>
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def page_origin(root: Path) -> Iterator[str]:
    """Serve ``root`` on its own port of 127.0.0.1: a web app's origin."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two page origins serving the same page: the first is allowed, the second not."""
    root = tmp_path_factory.mktemp("pages")
    (root / "index.html").write_text(PAGE)
    with page_origin(root) as allowed, page_origin(root) as other:
        yield allowed, other


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, origins: tuple[str, str]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("cors-browser")
    found = ServerProcess(workdir, base_env(workdir, allowed_origins=origins[0]))
    found.cli("migrate")
    found.cli("seed-demo")
    found.start()
    yield found
    found.stop()


@asynccontextmanager
async def unrouted_page(instance: Browser) -> AsyncIterator[tuple[Page, Requests]]:
    """A page with no request routes (see the module docstring): non-loopback
    traffic goes to a proxy that refuses every connection."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        context = await instance.new_context(
            proxy={
                "server": f"http://127.0.0.1:{dead.getsockname()[1]}",
                "bypass": "127.0.0.1,localhost,[::1]",
            }
        )
        requests = Requests()

        def record(url: str) -> None:
            requests.seen.append(url)
            if not url.startswith(("data:", "blob:")) and urlsplit(url).hostname not in LOCAL_HOSTS:
                requests.external.append(url)

        context.on("request", lambda request: record(request.url))
        try:
            page = await context.new_page()
            page.on("websocket", lambda ws: record(ws.url))
            yield page, requests
        finally:
            await context.close()


def channel_offset(server: ServerProcess) -> int:
    result = server.graphql(
        "query($n: String!) { channelPosition(name: $n) { offset } }",
        {"n": MATH_101},
        as_user="nw-cy",
    )
    return result["data"]["channelPosition"]["offset"]  # type: ignore[index,no-any-return]


async def test_an_allowed_origin_queries_mutates_and_subscribes(
    server: ServerProcess, origins: tuple[str, str]
) -> None:
    allowed, _ = origins
    async with browser() as instance, unrouted_page(instance) as (page, requests):
        await page.goto(f"{allowed}/index.html")
        got = await page.evaluate(
            "args => window.allowedTour(args)",
            {
                "api": server.url,
                "ws": server.ws_url,
                "channel": MATH_101,
                "student": token("nw-cy"),
                "teacher": token("nw-ada"),
                "title": "from another origin",
            },
        )

    assert got["me"] == {
        "status": 200,
        "body": {"data": {"me": {"id": "nw-cy", "role": "STUDENT"}}},
    }
    assert got["published"]["status"] == 200
    published = got["published"]["body"]["data"]["publishAnnouncement"]
    assert published["title"] == "from another origin"
    assert got["protocol"] == "graphql-transport-ws"
    since = got["since"]
    assert got["events"] == [
        {
            "data": {
                "channel": {
                    "offset": since["offset"] + 1,
                    "epoch": since["epoch"],
                    "kind": "announcement",
                    "announcement": published,
                }
            }
        }
    ]
    assert got["messages"] == ["connection_ack", "next"]
    assert got["closed"] is None  # the page closed it, after the quiet moment
    assert requests.external == []
    assert f"{server.url}/graphql" in requests.seen
    assert server.ws_url in requests.seen


async def test_an_origin_not_listed_reads_nothing_and_its_socket_is_refused(
    server: ServerProcess, origins: tuple[str, str]
) -> None:
    _, other = origins
    before = await asyncio.to_thread(channel_offset, server)
    async with browser() as instance, unrouted_page(instance) as (page, requests):
        await page.goto(f"{other}/index.html")
        got = await page.evaluate(
            "args => window.refusedTour(args)",
            {
                "api": server.url,
                "ws": server.ws_url,
                "channel": MATH_101,
                "teacher": token("nw-ada"),
                "title": "must not be published",
            },
        )

    assert got["get"] == {"error": "TypeError: Failed to fetch"}
    assert got["post"] == {"error": "TypeError: Failed to fetch"}
    # The handshake got a 403: the browser never opens the socket.
    assert got["socket"] == {"opened": False, "code": 1006}
    # The preflight was refused, so the mutation never ran.
    assert await asyncio.to_thread(channel_offset, server) == before
    assert requests.external == []
    assert server.ws_url in requests.seen
