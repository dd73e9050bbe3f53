"""How a consumer leaves its group on tansu, and why consumers restarted together
stalled ~19 s before their first batch.

tansu 0.6 holds every ``JoinGroup`` for half the session timeout, and its group
bookkeeping has two traps (``bench/results/2026-12-05-consumer-group.md``):

* It numbers a group's first generation 0, and aiokafka sends ``LeaveGroup`` on
  close only for ``generation > 0``. So the members of a first generation never
  left: consumers restarted within the session timeout joined a group whose
  leader was a departed member, waited in ``SyncGroup`` for an assignment nobody
  would send until that member expired, and joined again: ~19 s with the old
  10 s session timeout.
* Leaving is not safe either. When a follower leaves first, the group goes back
  to forming and keeps its leader; when that leader then leaves while the group
  forms, tansu removes it from the members but keeps it as leader, and from then
  on every join waits for an assignment from a member that is gone, forever (a
  quarter of our restarts after we made generation 0 leave too; stock aiokafka
  does it from generation 1).

Expiry is the one path tansu gets right (it evicts the leader as well), so by
default :class:`GroupConsumer` does not send ``LeaveGroup``: a stopped member is
dropped after the session timeout, like a static member, and the short default
session timeout bounds that. ``EDUMATRIX_KAFKA_LEAVE_GROUP=true`` (Apache Kafka,
Redpanda) leaves on close in every generation, so partitions move at once.

This reaches into aiokafka's group coordinator (private names): the version
window and the shape it relies on are checked once, at start; outside them
aiokafka's own behaviour stays, and the log says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

log = structlog.get_logger(__name__)

# aiokafka versions whose GroupCoordinator has the attributes used below (checked
# against 0.14.0, which requirements/ pins; the shape is also checked at run time).
TESTED_AIOKAFKA = ((0, 11), (0, 14))
_NEEDED = ("generation", "member_id", "group_id", "_send_req", "reset_generation")


def _version(text: str) -> tuple[int, int]:
    major, minor, *_ = (text.split(".") + ["0", "0"])[:3]
    try:
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def patch_leave(coordinator: Any, *, leave: bool, version: str = aiokafka.__version__) -> bool:
    """Make ``coordinator`` leave on close in every generation (``leave``) or in
    none; False (nothing changed) outside the tested aiokafka window or shape."""
    low, high = TESTED_AIOKAFKA
    if not low <= _version(version) <= high:
        return False
    stock = getattr(coordinator, "_maybe_leave_group", None)
    if stock is None or not all(hasattr(coordinator, name) for name in _NEEDED):
        return False
    original: Callable[[], Awaitable[None]] = stock

    async def stay() -> None:
        # What aiokafka does for static members: forget the membership locally and
        # let the broker expire it after the session timeout.
        coordinator.reset_generation()

    async def leave_any_generation() -> None:
        if coordinator.generation == 0 and coordinator.member_id:
            try:
                await coordinator._send_req(
                    LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
                )
            except KafkaError as exc:  # best effort, as aiokafka's own: the session expires
                log.warning("consumer.leave_failed", group=coordinator.group_id, error=repr(exc))
        await original()

    coordinator._maybe_leave_group = leave_any_generation if leave else stay
    return True


class GroupConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """An ``AIOKafkaConsumer`` that leaves its group on close in every generation
    (``leave_group=True``) or in none (the default, for tansu)."""

    def __init__(self, *topics: str, leave_group: bool = False, **config: Any) -> None:
        super().__init__(*topics, **config)
        self._leave_group = leave_group

    async def start(self) -> None:
        await super().start()
        coordinator = getattr(self, "_coordinator", None)
        if coordinator is not None and not patch_leave(coordinator, leave=self._leave_group):
            log.warning(
                "consumer.leave_patch_off",
                aiokafka=aiokafka.__version__,
                tested=TESTED_AIOKAFKA,
                hint="aiokafka leaves the group on close from generation 1 only; on tansu "
                "a group whose leader leaves while it rebalances can stall for good",
            )
