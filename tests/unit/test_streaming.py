"""The single-connection SSE reservation's queue: a stream that cannot keep up (or
was never opened) is ended with SLOW_CONSUMER, never left to drop events silently."""

from __future__ import annotations

import asyncio

from api.admission import Admission
from api.metrics import Metrics
from api.settings import Settings
from api.streaming import SLOW, Ended, Reservation, Slots
from streams.acl import Role, Viewer


def reservation(size: int) -> Reservation:
    viewer = Viewer(user_id="nw-cy", role=Role.STUDENT, institution="northwood")
    admission = Admission(Settings(), Metrics())
    return Reservation("t", viewer, Slots(admission, "127.0.0.1", None), asyncio.Queue(size))


async def test_an_open_stream_that_fills_up_is_ended_slow() -> None:
    r = reservation(2)
    ended: list[Ended] = []
    r.end = ended.append
    assert r.put("next", "{}") and r.put("next", "{}")
    assert not r.put("next", "{}")
    assert r.overflowed
    assert [e.code for e in ended] == [SLOW[1]]


async def test_a_reservation_that_fills_before_it_opens_remembers_it() -> None:
    r = reservation(1)
    assert r.put("next", "{}")
    assert not r.put("next", "{}")
    assert r.overflowed  # _open ends the stream with SLOW_CONSUMER as soon as it opens
