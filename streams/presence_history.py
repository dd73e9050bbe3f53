"""Presence over the last hour: one sample of who is online per interval (a minute).

A sample is taken from presence itself (:meth:`Presence.census`), which every
process already shares, and holds the member count of every institution-owned
channel with members (institution, department, classroom, role and alerts
channels; never a user's private channel) and each institution's online count.

Guarantees of every :class:`PresenceHistoryStore`:

* At most one sample per slot (``unix time // interval``), whichever and however
  many processes sample: :meth:`PresenceHistoryStore.write` stores a slot's sample
  only if the slot has none (atomically in Redis), so a second writer changes
  nothing. A process checks first and skips the census when the slot is taken.
* Samples are kept an hour (and two intervals more), then read as never taken.
* A slot with a sample and a channel absent from it: nobody was on the channel
  (0). A slot without a sample (no server running, the store unreachable, the
  slot's writer died between its check and its write): unknown, read as absent.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter

from streams.channels import ChannelError, ChannelKind, parse_channel
from streams.presence import Census, Presence
from streams.tasks import loud

log = structlog.get_logger(__name__)

RETENTION_SECONDS = 3600
SAMPLED_KINDS = frozenset(
    {
        ChannelKind.INSTITUTION,
        ChannelKind.DEPARTMENT,
        ChannelKind.CLASSROOM,
        ChannelKind.ROLE,
        ChannelKind.ALERTS,
    }
)
ONLINE = "online@"  # sample key of an institution's online count: online@{inst}


def online_key(institution: str) -> str:
    return f"{ONLINE}{institution}"


def sample_of(census: Census) -> dict[str, int]:
    """What a sample keeps of a census: the sampled channels' counts, and each
    institution's online count."""
    sample: dict[str, int] = {}
    for key, count in census.channels.items():
        try:
            kind = parse_channel(key).kind
        except ChannelError:
            continue  # e.g. system:status@{inst}, a per-institution presence key
        if kind in SAMPLED_KINDS and count > 0:
            sample[key] = count
    for institution, count in census.institutions.items():
        if count > 0:
            sample[online_key(institution)] = count
    return sample


@dataclass(frozen=True, slots=True)
class Series:
    """Samples of one key in slots ``first..last``: slot -> count (absent: no sample)."""

    interval: float
    first: int
    last: int
    counts: dict[int, int]


class PresenceHistoryStore(ABC):
    """Samples by slot, one per slot, kept about an hour."""

    kind = "abstract"

    def __init__(self, *, interval: float) -> None:
        self.interval = interval

    @property
    def ttl_seconds(self) -> int:
        return int(RETENTION_SECONDS + 2 * self.interval) + 1

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def taken(self, slot: int) -> bool:
        """Whether ``slot`` already has its sample."""

    @abstractmethod
    async def write(self, slot: int, sample: dict[str, int], by: str) -> bool:
        """Store ``slot``'s sample unless it has one; True if this call stored it."""

    @abstractmethod
    async def read(self, key: str, first: int, last: int) -> dict[int, int]:
        """``key``'s count in every slot of ``first..last`` that has a sample (0 where
        the sample does not name it)."""


class MemoryPresenceHistory(PresenceHistoryStore):
    """Embedded mode: one process, so its memory is the whole history."""

    kind = "memory"

    def __init__(self, *, interval: float) -> None:
        super().__init__(interval=interval)
        self._samples: dict[int, dict[str, int]] = {}

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def taken(self, slot: int) -> bool:
        return slot in self._samples

    async def write(self, slot: int, sample: dict[str, int], by: str) -> bool:
        if slot in self._samples:
            return False
        self._samples[slot] = dict(sample)
        oldest = slot - int(self.ttl_seconds / self.interval)
        for old in [s for s in self._samples if s < oldest]:
            del self._samples[old]
        return True

    async def read(self, key: str, first: int, last: int) -> dict[int, int]:
        return {
            s: self._samples[s].get(key, 0) for s in range(first, last + 1) if s in self._samples
        }


class PresenceSampler:
    """Takes the sample of each slot, shortly after the slot begins, unless another
    process already did; reads the history back."""

    def __init__(
        self,
        presence: Presence,
        store: PresenceHistoryStore,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.presence = presence
        self.store = store
        self.interval = store.interval
        self.process = secrets.token_hex(6)
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.samples = Counter(
            "edumatrix_presence_samples",
            "Presence history samples this process wrote (written), found already taken "
            "by another process (taken), or could not take (failed)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("written", "taken", "failed"):
            self.samples.labels(outcome=outcome)

    @property
    def kind(self) -> str:
        return self.store.kind

    def slot(self, now: float) -> int:
        return int(now // self.interval)

    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.create_task(self._run(), name="presence-sampler")
        self._task.add_done_callback(loud("presence_history.task_died"))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self.store.close()

    async def sample(self, slot: int) -> bool:
        """Take ``slot``'s sample unless it is taken; True if this process wrote it."""
        if await self.store.taken(slot):
            self.samples.labels(outcome="taken").inc()
            return False
        sample = sample_of(await self.presence.census())
        written = await self.store.write(slot, sample, self.process)
        self.samples.labels(outcome="written" if written else "taken").inc()
        return written

    async def _run(self) -> None:
        while True:
            now = time.time()
            slot = self.slot(now)
            try:
                await self.sample(slot)
            except Exception as exc:  # the store or presence unreachable: a gap, say so
                self.samples.labels(outcome="failed").inc()
                if not self._failing:
                    log.warning("presence_history.sample_failed", slot=slot, error=repr(exc))
                self._failing = True
            else:
                self._failing = False
            # The next slot's start, plus a little jitter so that processes rarely
            # all do the census at once (the first to write wins either way).
            jitter = random.uniform(0.0, min(self.interval * 0.1, 2.0))
            await asyncio.sleep(max((slot + 1) * self.interval - time.time(), 0.0) + jitter)

    async def read(self, key: str, slots: int, now: float | None = None) -> Series:
        """The last ``slots`` slots of ``key``, ending with the current one if its
        sample was taken, else with the one before it."""
        now = time.time() if now is None else now
        last = self.slot(now)
        if not await self.store.taken(last):
            last -= 1
        first = last - slots + 1
        return Series(self.interval, first, last, await self.store.read(key, first, last))
