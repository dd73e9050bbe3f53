"""The live dashboard (``/dashboard``) in a real browser, against a real server.

Debian's chromium through Playwright (``tests/browser.py``): every request that
leaves loopback is aborted and recorded, and each test asserts there were none. An
admin signs in with a pasted token; events, announcements and an alert published
through the API show up on the page over subscriptions; a student's
acknowledgement moves the alert's roll-call; a server restart shows the
"reconnecting" state and stale panels, then fresh data. Screenshots go to
``.test-artifacts/dashboard/`` (ignored by git).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page

from tests.browser import browser, offline_page
from tests.pages import references, sri
from tests.server import REPO, ServerProcess, token

VENDOR = REPO / "api" / "static" / "dashboard" / "vendor"
APP = REPO / "api" / "static" / "dashboard" / "app"
ARTIFACTS = REPO / ".test-artifacts" / "dashboard"
WAIT_MS = 10_000
MATH_101 = "institution:northwood:classroom:nw-math-101"


def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VENDOR / "manifest.json").read_text())
    return loaded


def test_every_file_the_page_loads_is_served_and_matches_the_manifest(
    embedded_server: ServerProcess,
) -> None:
    page = httpx.get(f"{embedded_server.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    vendored = {f["path"]: f for f in manifest()["files"]}

    loaded = []
    for tag, url, integrity in references(page.text):
        response = httpx.get(f"{embedded_server.url}{url}", headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200, url
        digest = hashlib.sha256(response.content).hexdigest()
        assert integrity == sri(digest), url
        if url.startswith("/dashboard/assets/"):
            entry = vendored[url.removeprefix("/dashboard/assets/")]
            assert digest == entry["sha256"], url
            assert tag == ("script" if entry["load"] == "script" else "link")
            assert "immutable" in response.headers["cache-control"]
            loaded.append(entry["path"])
        else:
            path, _, version = url.removeprefix("/dashboard/app/").partition("?v=")
            assert url.startswith("/dashboard/app/"), f"{url}: not from this server"
            assert digest == hashlib.sha256((APP / path).read_bytes()).hexdigest(), url
            assert digest.startswith(version), url
            assert response.headers["cache-control"] == "no-cache"
            loaded.append(path)
    # Everything the manifest says the page loads, in its order, then our own files.
    wanted = [f["path"] for f in manifest()["files"] if f["load"] == "style"]
    wanted += ["dashboard.css"]
    wanted += [f["path"] for f in manifest()["files"] if f["load"] == "script"]
    wanted += ["dashboard.js"]
    assert loaded == wanted


def test_the_vendored_files_are_the_pinned_versions() -> None:
    """A bump in tools/dashboard/package.json without `make dashboard-assets` fails
    here; so does a vendored file edited by hand."""
    pins = json.loads((REPO / "tools" / "dashboard" / "package.json").read_text())
    assert manifest()["packages"] == pins["dependencies"]
    for entry in manifest()["files"]:
        data = (VENDOR / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]


# ---- in the browser ---------------------------------------------------------------


async def sign_in(page: Page, server: ServerProcess, user: str) -> str:
    """As a user does, with the keyboard: paste the token, Tab to the button, Enter."""
    await page.goto(f"{server.url}/dashboard")
    secret = token(user)
    await page.locator("#token").fill(secret)
    await page.keyboard.press("Tab")  # from the token to the sign-in button
    assert await page.evaluate("() => document.activeElement.textContent") == "Sign in"
    await page.keyboard.press("Enter")
    await live(page)
    return secret


async def live(page: Page) -> None:
    await page.wait_for_function(
        "() => document.body.dataset.connection === 'live' && "
        "[...document.querySelectorAll('.panel')].every(p => p.dataset.state === 'live')",
        timeout=WAIT_MS,
    )


async def shows(page: Page, selector: str, text: str) -> None:
    await page.wait_for_function(
        "([s, t]) => [...document.querySelectorAll(s)].some(e => e.textContent.includes(t))",
        arg=[selector, text],
        timeout=WAIT_MS,
    )


async def number(page: Page, js: str) -> int:
    value = await page.evaluate(js)
    return int(value or 0)


async def until(page: Page, condition: str, what: str, arg: Any = None) -> None:
    try:
        await page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)
    except Exception as error:
        shot = await screenshot(page, f"failed-{int(time.time())}")
        raise AssertionError(f"{what}: not within {WAIT_MS} ms (screenshot {shot})") from error


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def graphql(server: ServerProcess, query: str, user: str, **variables: Any) -> dict[str, Any]:
    answer = server.graphql(query, variables, as_user=user)
    assert "errors" not in answer, answer
    data: dict[str, Any] = answer["data"]  # type: ignore[assignment]
    return data


async def api(server: ServerProcess, query: str, user: str, **variables: Any) -> dict[str, Any]:
    return await asyncio.to_thread(graphql, server, query, user, **variables)


PUBLISH = """mutation($channel: String!, $title: String!) { publishAnnouncement(input:
  {channel: $channel, title: $title, body: "from the test", priority: HIGH}) { id } }"""
TRACK = 'mutation { trackActivity(input: {type: "dashboard_test"}) }'
RAISE = """mutation($title: String!) { raiseAlert(input: {institutionId: "northwood",
  severity: EMERGENCY, title: $title, body: "Stay where you are",
  targets: ["institution:northwood:classroom:nw-math-101"]}) { id } }"""
ACK = "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { acknowledgedAt } }"
TYPE_COUNT = """(t) => { const row = [...document.querySelectorAll('#events-table tbody tr')]
  .find(r => r.querySelector('th')?.textContent === t);
  return row ? Number(row.querySelector('td').textContent) : 0; }"""


async def test_admin_sees_events_announcements_and_an_alerts_roll_call_live(
    make_server: Callable[..., ServerProcess],
) -> None:
    # A server of its own: the chart's caption names the hour's top event types, and
    # on the suite's shared server other tests' events would crowd this one out.
    # Presence is sampled every second (not every minute) so the online chart fills.
    server = make_server(presence_history_interval_seconds="1")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with browser() as instance, offline_page(instance) as (page, requests):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        secret = await sign_in(page, server, "nw-admin")
        assert await page.inner_text("#who") == "Nora Admin · admin · Northwood High School"
        # The token is in this tab's sessionStorage, nowhere else.
        assert await page.evaluate("() => sessionStorage.length") == 1
        assert await page.evaluate("() => JSON.stringify(localStorage)") == "{}"
        assert secret in await page.evaluate("() => JSON.stringify(sessionStorage)")
        # Every form control has a label.
        unlabelled = await page.evaluate(
            "() => [...document.querySelectorAll('input, select, textarea')]"
            ".filter(e => e.labels.length === 0).map(e => e.id)"
        )
        assert unlabelled == []
        # The admin's own page is present on the institution channel (at least).
        await until(
            page, "() => Number(document.querySelector('#online-count').textContent) >= 1", "online"
        )

        # Events per minute: the table (liveMetrics) and the chart's hour (analytics).
        before_chart = await number(
            page, "() => document.querySelector('#events-chart').dataset.total"
        )
        for _ in range(3):
            await api(server, TRACK, "nw-cy")
        await until(page, f"() => ({TYPE_COUNT})('activity.dashboard_test') >= 3", "events table")
        await until(
            page,
            "(n) => Number(document.querySelector('#events-chart').dataset.total) >= n + 3",
            "chart total",
            arg=before_chart,
        )
        await shows(page, "#events-figure figcaption", "activity.dashboard_test")

        # An announcement published through the API, then one through the page's form.
        title = f"Dashboard test {time.monotonic_ns()}"
        await api(server, PUBLISH, "nw-ada", channel=MATH_101, title=title)
        await shows(page, "#announcement-list li", title)
        await page.select_option("#pub-channel", MATH_101)
        await page.fill("#pub-title", f"{title} (form)")
        await page.fill("#pub-body", "typed in the dashboard")
        await page.click("#publish-form button[type=submit]")
        await shows(page, "#publish-message", "Published #")
        await shows(page, "#announcement-list li", f"{title} (form)")
        # It went out on the channel: a teacher's read sees it.
        latest = await api(
            server,
            "query($c: String!) { announcements(channel: $c, last: 1) { title } }",
            "nw-ada",
            c=MATH_101,
        )
        assert latest["announcements"] == [{"title": f"{title} (form)"}]

        # The two announcements were delivered to the page's own channel
        # subscriptions: the deployment's numbers, their latency and its chart.
        await until(
            page,
            "() => Number(document.querySelector('#m-delivered-all').textContent) >= 2",
            "deployment-wide deliveries",
        )
        assert await page.inner_text("#m-processes") == "1"
        assert re.fullmatch(
            r"p50 [0-9.]+ ms · p95 [0-9.]+ ms · p99 [0-9.]+ ms",
            await page.inner_text("#m-delivery-latency"),
        )
        await until(
            page,
            "() => Number(document.querySelector('#delivery-chart').dataset.minutes) >= 1",
            "latency chart",
        )
        assert await page.locator("#delivery-chart canvas").count() == 1
        await shows(page, "#delivery-figure figcaption", "messages delivered")
        # Online over the last hour: samples with this admin's page present.
        await until(
            page,
            "() => Number(document.querySelector('#online-chart').dataset.latest) >= 1",
            "online history",
        )
        assert await page.locator("#online-chart canvas").count() == 1
        await shows(page, "#online-figure figcaption", "people of your institution online")

        # An alert: its roll-call moves when the student acknowledges through the API.
        raised = await api(server, RAISE, "nw-admin", title=f"Lockdown drill {title}")
        alert_id = raised["raiseAlert"]["id"]
        item = f'#alert-list li[data-id="{alert_id}"]'
        await until(page, f"() => !!document.querySelector('{item} .rollcall')", "alert shown")
        rollcall = page.locator(f"{item} .rollcall")
        assert await rollcall.inner_text() == (
            "Acknowledged 0 of 2 · not yet 2 (0 of them online now)"
        )
        # State and severity in words, not colour only.
        assert "OPEN" in await page.inner_text(f"{item} h3")
        assert "EMERGENCY" in await page.inner_text(f"{item} h3")
        await screenshot(page, "admin-alert-open")
        await api(server, ACK, "nw-cy", id=alert_id)
        await until(
            page,
            f"() => document.querySelector('{item} .rollcall')?.dataset.acknowledged === '1'",
            "roll-call after the acknowledgement",
        )
        assert await rollcall.inner_text() == (
            "Acknowledged 1 of 2 · not yet 1 (0 of them online now)"
        )
        await page.locator(f"{item} summary").click()
        assert "✓ Cy Student: acknowledged" in await page.inner_text(f"{item} .people")
        assert "✗ Ada Lovelace: not yet · ○ offline" in await page.inner_text(f"{item} .people")

        # Resolve with the keyboard; the page shows it resolved, in words.
        await page.focus(f'{item} button[data-action="resolve"]')
        await page.keyboard.press("Enter")
        await until(
            page,
            f"() => document.querySelector('{item}')?.dataset.state === 'RESOLVED'",
            "resolved",
        )
        assert "RESOLVED" in await page.inner_text(f"{item} h3")
        await screenshot(page, "admin-desktop")

        # Phone width: one column, nothing wider than the screen.
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.wait_for_timeout(200)
        wide = await page.evaluate(
            "() => [...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".map(e => `${e.tagName}#${e.id}.${e.className} ${e.getBoundingClientRect().right}`)"
        )
        assert wide == []
        assert await page.evaluate(
            "() => document.documentElement.scrollWidth <= window.innerWidth"
        )
        await screenshot(page, "admin-phone")

        # A teacher, in another tab: only her channels, no analytics.
        teacher = await page.context.new_page()
        teacher.on("pageerror", lambda e: errors.append(str(e)))
        await teacher.goto(f"{server.url}/dashboard")
        # A new tab starts signed out: the admin's token stayed in her tab.
        await teacher.wait_for_selector("#sign-in-form", state="visible")
        assert await teacher.locator("#board").is_hidden()
        await teacher.locator("#token").fill(token("nw-ada"))
        await teacher.locator("#sign-in-form button[type=submit]").click()
        await teacher.wait_for_function(
            "() => document.querySelector('#panel-announcements').dataset.state === 'live'",
            timeout=WAIT_MS,
        )
        rows = await teacher.locator("#presence-table tbody th").all_inner_texts()
        assert rows == [
            "Northwood High School",
            "Department: Mathematics",
            "Classroom: Algebra I",
            "Classroom: Geometry",
        ]
        for panel in ("#panel-events", "#panel-pipeline"):
            assert await teacher.inner_text(f"{panel} .freshness") == "Not available to your role."
        await shows(teacher, "#announcement-list li", f"{title} (form)")
        assert requests.external == []
        assert errors == []


async def test_a_restart_shows_reconnecting_and_stale_then_fresh_data(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server()
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with browser() as instance, offline_page(instance) as (page, requests):
        await sign_in(page, server, "nw-admin")
        before = f"Before the restart {time.monotonic_ns()}"
        await api(server, PUBLISH, "nw-admin", channel="institution:northwood", title=before)
        await shows(page, "#announcement-list li", before)
        await api(server, RAISE, "nw-admin", title=before)
        await shows(page, "#alert-list li", before)

        await asyncio.to_thread(server.stop)
        await until(
            page, "() => document.body.dataset.connection === 'reconnecting'", "reconnecting"
        )
        await shows(page, "#connection", "Reconnecting")
        await until(
            page,
            "() => [...document.querySelectorAll('.panel')]"
            ".every(p => p.dataset.state === 'stale')",
            "every panel stale",
        )
        await shows(page, "#panel-presence .freshness", "Stale: not updated since")
        await screenshot(page, "reconnecting")

        await asyncio.to_thread(server.start)
        await live(page)
        after = f"After the restart {time.monotonic_ns()}"
        await api(server, PUBLISH, "nw-admin", channel="institution:northwood", title=after)
        await shows(page, "#announcement-list li", after)
        titles = await page.locator("#announcement-list .title").all_inner_texts()
        assert titles.count(before) == 1 and titles.count(after) == 1
        await screenshot(page, "reconnected")

        # A reload keeps the tab's sign-in (sessionStorage). The restarted server's
        # alerts channel has no history; the alert raised before the restart is
        # listed from Query.alertPage (the open alerts).
        await page.reload()
        await live(page)
        await shows(page, "#alert-list li", "Before the restart")
        assert requests.external == []


async def test_a_teachers_roll_call_moves_with_no_live_metrics(
    make_server: Callable[..., ServerProcess],
) -> None:
    """A teacher has no liveMetrics (admins and services only): her alert's roll-call
    moves because the acknowledgement is announced to her (alertRollCall), and her
    alert is listed from Query.alertPage though raised before she opened the page."""
    server = make_server()
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with browser() as instance, offline_page(instance) as (page, requests):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        title = f"Teacher's drill {time.monotonic_ns()}"
        raised = await api(server, RAISE, "nw-ada", title=title)
        alert_id = raised["raiseAlert"]["id"]
        await page.goto(f"{server.url}/dashboard")
        await page.locator("#token").fill(token("nw-ada"))
        await page.locator("#sign-in-form button[type=submit]").click()
        item = f'#alert-list li[data-id="{alert_id}"]'
        await until(
            page,
            f"() => document.querySelector('{item} .rollcall')?.dataset.pending === '2'",
            "her alert with its roll-call",
        )
        assert await page.inner_text("#panel-events .freshness") == "Not available to your role."
        rollcall = page.locator(f"{item} .rollcall")
        assert await rollcall.inner_text() == (
            "Acknowledged 0 of 2 · not yet 2 (1 of them online now)"  # she is, on the page
        )
        # Let the page settle: presence snapshots re-read roll-calls (for who is
        # online), throttled; after this nothing but the acknowledgement can move it.
        await page.wait_for_timeout(1500)
        await api(server, ACK, "nw-cy", id=alert_id)
        await until(
            page,
            f"() => document.querySelector('{item} .rollcall')?.dataset.acknowledged === '1'",
            "roll-call after the student's acknowledgement",
        )
        assert await rollcall.inner_text() == (
            "Acknowledged 1 of 2 · not yet 1 (1 of them online now)"
        )
        await page.locator(f"{item} summary").click()
        assert "✓ Cy Student: acknowledged" in await page.inner_text(f"{item} .people")
        await screenshot(page, "teacher-roll-call")
        assert requests.external == []
        assert errors == []
