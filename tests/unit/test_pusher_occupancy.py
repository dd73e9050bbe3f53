"""Occupancy transitions (streams/pusher_occupancy.py): what a claim change means for
the channel as a whole, and the memory backend's counts."""

from __future__ import annotations

from streams.pusher_occupancy import OCCUPIED, VACATED, MemoryOccupancy, transitions


def test_transitions_of_the_claim_script() -> None:
    assert transitions(0, 0, 1) == [OCCUPIED]  # first holder
    assert transitions(1, 1, 2) == []  # another process joins
    assert transitions(2, 2, 1) == []  # one of two leaves
    assert transitions(1, 1, 0) == [VACATED]  # the last leaves
    # Only a dead process held it: it was empty already, then this one takes it.
    assert transitions(1, 0, 1) == [VACATED, OCCUPIED]
    assert transitions(2, 0, 0) == [VACATED]  # the reaper drops the last dead claims
    assert transitions(0, 0, 0) == []


async def test_memory_occupancy_reports_first_in_and_last_out() -> None:
    seen: list[tuple[str, str, str]] = []
    occupancy = MemoryOccupancy(lambda app, name, event: seen.append((app, name, event)))
    await occupancy.add("1", "private-a")
    await occupancy.add("1", "private-a")
    await occupancy.add("2", "private-a")
    assert await occupancy.channels("1") == {"private-a": 2}
    await occupancy.remove("1", "private-a")
    assert seen == [("1", "private-a", OCCUPIED), ("2", "private-a", OCCUPIED)]
    await occupancy.remove("1", "private-a")
    assert seen[-1] == ("1", "private-a", VACATED)
    assert await occupancy.channels("1") == {}
    assert await occupancy.claim_event("anything")
