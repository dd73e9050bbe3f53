"""Take docs/dashboard.png: the dashboard of the demo admin, against the demo data.

    .venv/bin/python tools/dashboard/screenshot.py [--out docs/dashboard.png]

Starts a throwaway embedded server (``edumatrix migrate``, ``seed-demo``, ``serve``
in a temporary directory), makes a little activity through the API (announcements,
tracked events, an alert one student acknowledges, a teacher's open dashboard as
someone online), signs in as ``nw-admin`` in Debian's chromium and saves the page.
It reuses the test helpers (tests/server.py, tests/browser.py); nothing leaves
loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import browser, offline_page  # noqa: E402
from tests.server import ServerProcess, base_env, token  # noqa: E402

ANNOUNCE = """mutation($c: String!, $t: String!, $b: String!, $p: Priority!) {
  publishAnnouncement(input: {channel: $c, title: $t, body: $b, priority: $p}) { id } }"""
TRACK = "mutation($t: String!) { trackActivity(input: {type: $t}) }"
RAISE = """mutation { raiseAlert(input: {institutionId: "northwood", severity: WARNING,
  title: "Fire drill at 10:30", body: "Leave by the nearest exit; meet on the field.",
  targets: ["institution:northwood:classroom:nw-math-101",
            "institution:northwood:classroom:nw-sci-201"]}) { id } }"""
ACK = "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { acknowledgedAt } }"


def activity(server: ServerProcess) -> None:
    for user, channel, title, body, priority in (
        ("nw-admin", "institution:northwood", "Sports day moved", "Now on Thursday.", "NORMAL"),
        ("nw-bo", "institution:northwood:classroom:nw-sci-201", "Lab coats", "Bring yours.", "LOW"),
        ("nw-ada", "institution:northwood:classroom:nw-math-101", "Quiz Friday", "Ch. 3-4", "HIGH"),
    ):
        server.graphql(ANNOUNCE, {"c": channel, "t": title, "b": body, "p": priority}, as_user=user)
    for user, kind, times in (("nw-cy", "page_view", 6), ("nw-dee", "video_play", 3)):
        for _ in range(times):
            server.graphql(TRACK, {"t": kind}, as_user=user)


async def shoot(server: ServerProcess, out: Path) -> None:
    async with browser() as instance, offline_page(instance) as (page, requests):
        # A teacher with the dashboard open is someone online.
        teacher = await page.context.new_page()
        await teacher.goto(f"{server.url}/dashboard")
        await teacher.fill("#token", token("nw-ada"))
        await teacher.click("#sign-in-form button[type=submit]")
        await teacher.wait_for_function("() => document.body.dataset.connection === 'live'")

        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.goto(f"{server.url}/dashboard")
        await page.fill("#token", token("nw-admin"))
        await page.click("#sign-in-form button[type=submit]")
        await page.wait_for_function("() => document.body.dataset.connection === 'live'")
        alert = server.graphql(RAISE, as_user="nw-admin")["data"]["raiseAlert"]["id"]  # type: ignore[index]
        server.graphql(ACK, {"id": alert}, as_user="nw-cy")
        await page.wait_for_function(
            "() => document.querySelector('.rollcall')?.dataset.acknowledged === '1' && "
            "Number(document.querySelector('#events-chart').dataset.total) > 0 && "
            "[...document.querySelectorAll('.panel')].every(p => p.dataset.state === 'live')",
            timeout=15_000,
        )
        await page.locator("#alert-list details").first.click()
        await page.wait_for_timeout(500)
        await page.screenshot(path=str(out), full_page=True)
        if requests.external:
            raise SystemExit(f"the page asked for outside URLs: {requests.external}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = ServerProcess(workdir, base_env(workdir))
        server.cli("migrate")
        server.cli("seed-demo")
        server.start()
        try:
            activity(server)
            asyncio.run(shoot(server, args.out))
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
