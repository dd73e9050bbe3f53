"""The lifespan's shutdown steps are bounded: one that hangs cannot keep a stopped
server running, and the steps after it still run."""

from __future__ import annotations

import asyncio

from api.app import _bounded_close


async def test_a_hanging_step_is_cut_at_its_limit_and_the_next_still_runs() -> None:
    ran: list[str] = []

    async def hangs() -> None:
        ran.append("hangs")
        await asyncio.Event().wait()

    async def fails() -> None:
        ran.append("fails")
        raise ConnectionError("backend gone")

    async def closes() -> None:
        ran.append("closes")

    outcomes = []
    async with asyncio.timeout(5):
        for step, close in (("bus", hangs), ("events", fails), ("database", closes)):
            outcomes.append(await _bounded_close(step, close, 0.2))
    assert ran == ["hangs", "fails", "closes"]
    assert outcomes == ["timeout", "failed", "closed"]  # each also logged with its step
