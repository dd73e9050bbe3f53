"""GraphiQL with no network: served by the server alone, in a real browser.

The page (``api/graphiql.py``) and every file it loads come from the server; the
browser (``tests/browser.py``) aborts and records anything that leaves loopback. In
it, a user types the token into GraphiQL's Headers editor, runs a query, runs a
subscription and sees the event a teacher then publishes. The token is never
written to localStorage unless the server opts in
(``EDUMATRIX_GRAPHIQL_PERSIST_HEADERS``). Against Strawberry's own page every test
here fails: it loads its files from a CDN.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from playwright.async_api import Page

from tests.browser import browser, offline_page
from tests.integration.test_embedded_ws import MATH_101, PUBLISH
from tests.pages import references, sri
from tests.server import REPO, ServerProcess, token

ASSETS = REPO / "api" / "static" / "graphiql"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends
WAIT_MS = 10_000


def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ASSETS / "manifest.json").read_text())
    return loaded


def test_every_file_the_page_loads_is_served_and_matches_the_manifest(
    embedded_server: ServerProcess,
) -> None:
    files = {f["path"]: f for f in manifest()["files"]}
    page = httpx.get(f"{embedded_server.url}/graphql", headers=HTML)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    refs = [r for r in references(page.text) if not r[1].startswith("data:")]

    served = []
    for tag, url, integrity in refs:
        assert url.startswith("/graphiql/assets/"), f"{url}: not from this server"
        entry = files[url.removeprefix("/graphiql/assets/")]
        assert tag == ("script" if entry["load"] == "script" else "link")
        response = httpx.get(f"{embedded_server.url}{url}", headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200, url
        assert hashlib.sha256(response.content).hexdigest() == entry["sha256"], url
        assert "immutable" in response.headers["cache-control"]
        assert integrity == sri(entry["sha256"]), url
        served.append((entry["load"], entry["path"]))
    # Everything the manifest says the page loads; scripts in the manifest's order.
    for kind in ("style", "script"):
        wanted = [f["path"] for f in manifest()["files"] if f["load"] == kind]
        assert [path for load, path in served if load == kind] == wanted
    assert len(served) == 6  # React, ReactDOM, GraphiQL (css, js), the explorer (css, js)

    # The old address still leads there.
    again = httpx.get(f"{embedded_server.url}/graphiql", headers=HTML, follow_redirects=True)
    assert again.status_code == 200 and again.text == page.text


def test_the_vendored_files_are_the_pinned_versions() -> None:
    """A bump in tools/graphiql/package.json without `make graphiql-assets` fails here;
    so does a vendored file edited by hand."""
    pins = json.loads((REPO / "tools" / "graphiql" / "package.json").read_text())
    assert manifest()["packages"] == pins["dependencies"]
    for entry in manifest()["files"]:
        data = (ASSETS / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]


# GraphiQL 3 is CodeMirror 5: each editor's element carries its CodeMirror instance.
def _editor(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector + ' .CodeMirror')}).CodeMirror"


QUERY_EDITOR = _editor(".graphiql-query-editor")
RESPONSE = _editor(".graphiql-response")
HEADERS = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"


async def open_graphiql(page: Page, server: ServerProcess) -> None:
    await page.goto(f"{server.url}/graphql")
    # The explorer plugin's button: React, GraphiQL and the plugin have all loaded.
    await page.wait_for_selector(".graphiql-query-editor .CodeMirror", timeout=WAIT_MS)
    await page.wait_for_selector('[aria-label="Show GraphiQL Explorer"]', timeout=WAIT_MS)


async def type_headers(page: Page, headers: str) -> None:
    """As a user does: open the Headers tab, click into its editor, type."""
    await page.locator(".graphiql-editor-tools button", has_text="Headers").click()
    await page.locator(HEADERS).click()
    await page.keyboard.insert_text(headers)


async def headers_shown(page: Page) -> str:
    await page.locator(".graphiql-editor-tools button", has_text="Headers").click()
    shown: str = await page.evaluate(
        f"() => document.querySelector({json.dumps(HEADERS)}).CodeMirror.getValue()"
    )
    return shown


async def run(page: Page, query: str, name: str) -> None:
    """Put ``query`` (an operation called ``name``) in the editor and press run.

    GraphiQL reads the operation's name 100 ms (debounced) after an edit, and runs
    with the name it last read: press run before that and the server is asked for
    the previous operation's name."""
    await page.evaluate(f"(q) => {QUERY_EDITOR}.setValue(q)", query)
    await page.wait_for_function(
        f"(n) => {QUERY_EDITOR}.operationName === n", arg=name, timeout=WAIT_MS
    )
    await page.locator(".graphiql-execute-button").click()


async def response_holding(page: Page, text: str) -> dict[str, Any]:
    await page.wait_for_function(
        f"(t) => {RESPONSE}.getValue().includes(t)", arg=text, timeout=WAIT_MS
    )
    shown: dict[str, Any] = json.loads(await page.evaluate(f"() => {RESPONSE}.getValue()"))
    return shown


async def local_storage(page: Page) -> dict[str, str]:
    stored: dict[str, str] = await page.evaluate("() => ({...localStorage})")
    return stored


def channel_subscriptions(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('edumatrix_subscriptions{kind="channel"}'):
            return float(line.split()[-1])
    return 0.0


async def until(page: Page, condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            shown = await page.evaluate(f"() => {RESPONSE}.getValue()")
            raise AssertionError(f"{what}: not after {WAIT_MS} ms; GraphiQL shows {shown!r}")
        await asyncio.sleep(0.05)


async def test_query_and_live_subscription_offline_token_kept_off_disk(
    embedded_server: ServerProcess,
) -> None:
    student = token("nw-cy")
    async with browser() as instance, offline_page(instance) as (page, requests):
        await open_graphiql(page, embedded_server)
        await type_headers(page, json.dumps({"Authorization": f"Bearer {student}"}))

        await run(page, "query Me { me { id role institutionId } }", "Me")
        me = await response_holding(page, '"nw-cy"')
        assert me == {
            "data": {"me": {"id": "nw-cy", "role": "STUDENT", "institutionId": "northwood"}}
        }

        # From the current position, so nothing older arrives and the event below
        # cannot slip between the subscribe and the publish.
        here = await asyncio.to_thread(
            embedded_server.graphql,
            "query($n: String!) { channelPosition(name: $n) { offset epoch } }",
            {"n": MATH_101},
            as_user="nw-cy",
        )
        since = here["data"]["channelPosition"]  # type: ignore[index]
        before = await asyncio.to_thread(channel_subscriptions, embedded_server)
        await run(
            page,
            f'subscription Live {{ channel(name: "{MATH_101}", '
            f'since: {{offset: {since["offset"]}, epoch: "{since["epoch"]}"}}) '
            "{ offset kind announcement { title } } }",
            "Live",
        )
        await until(page, lambda: channel_subscriptions(embedded_server) > before, "subscribed")
        title = f"GraphiQL offline {time.monotonic_ns()}"
        published = await asyncio.to_thread(
            embedded_server.graphql,
            PUBLISH,
            {"channel": MATH_101, "title": title},
            as_user="nw-ada",
        )
        assert "errors" not in published, published
        event = (await response_holding(page, title))["data"]["channel"]
        assert event["kind"] == "announcement" and event["announcement"] == {"title": title}
        assert int(event["offset"]) == int(since["offset"]) + 1

        assert requests.external == []
        stored = await local_storage(page)
        # GraphiQL did store the page's state (history included), but not the token.
        assert "Me" in stored["graphiql:queries"] and "Live" in stored["graphiql:queries"]
        assert not [key for key, value in stored.items() if student in value]

        # A reload forgets the headers, and one stored before (by an earlier opt-in)
        # is neither shown nor kept.
        await page.evaluate(
            "(h) => localStorage.setItem('graphiql:headers', h)",
            json.dumps({"Authorization": f"Bearer {student}"}),
        )
        await page.reload()
        await page.wait_for_selector('[aria-label="Show GraphiQL Explorer"]', timeout=WAIT_MS)
        assert student not in await headers_shown(page)
        assert not [key for key, value in (await local_storage(page)).items() if student in value]
        assert requests.external == []


async def test_headers_persist_when_the_server_opts_in(make_server: Any) -> None:
    server = make_server(graphiql_persist_headers="true")
    server.cli("migrate")
    server.start()
    teacher = token("nw-ada")
    headers = json.dumps({"Authorization": f"Bearer {teacher}"})
    async with browser() as instance, offline_page(instance) as (page, requests):
        await open_graphiql(page, server)
        await type_headers(page, headers)
        await run(page, "query Who { me { id } }", "Who")
        await response_holding(page, '"nw-ada"')
        # GraphiQL writes the headers editor to localStorage after a short debounce.
        await page.wait_for_function(
            "(t) => (localStorage.getItem('graphiql:headers') || '').includes(t)",
            arg=teacher,
            timeout=WAIT_MS,
        )
        await page.reload()
        await page.wait_for_selector('[aria-label="Show GraphiQL Explorer"]', timeout=WAIT_MS)
        assert teacher in await headers_shown(page)
        assert requests.external == []
