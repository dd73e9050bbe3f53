"""Replays admitted and paced: a herd of resuming subscribers never fails for want of
a connection, and shares its history reads.

Why: after a deploy or a Wi-Fi blip hundreds of clients resubscribe with ``since``
within a second. Each replay read history on its own, the Redis pool ran out
(redis-py raises at once when every connection is busy) and the failed replays
ended their subscriptions with a bare ``complete`` that clients took for a normal
end. Here:

* at most ``concurrency`` history reads run at once per process; the rest wait in
  a queue of at most ``queue_size`` replays, each for at most ``wait_seconds``;
* replays of one channel that are waiting together are served by one read, from
  the oldest position among them (history is bounded, so one read holds them all);
* a read that fails (Redis restarting) is retried with backoff until the wait runs
  out; only then, or when the queue is full, :class:`ReplayUnavailable` says so,
  with a retry hint, and the caller tells its client.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.envelope import Position
from streams.history import ChannelLog, Recovery, recover

log = structlog.get_logger(__name__)


class ReplayUnavailable(Exception):
    """History could not be read in time; resubscribe with the same ``since`` later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RecoveryMetrics:
    """Counts of the recovery path, for ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.replays = Counter(
            "edumatrix_replays",
            "Subscriptions resumed with since, by outcome (served: from history; "
            "reset: history could not cover, the client was told to refetch; "
            "refused: UNAVAILABLE with a retry hint)",
            ["result"],
            registry=registry,
        )
        self.reads = Counter(
            "edumatrix_replay_reads",
            "History reads made for replays (below replays served when reads are shared)",
            registry=registry,
        )
        self.queued = Gauge(
            "edumatrix_replays_queued",
            "Replays waiting for a history read",
            registry=registry,
        )
        self.resets = Counter(
            "edumatrix_resets",
            "Reset markers sent to subscriptions, by cause (history_trimmed: the gap is "
            "older than history; epoch_changed: Redis lost the channel's history)",
            ["cause"],
            registry=registry,
        )
        for result in ("served", "reset", "refused"):
            self.replays.labels(result=result)
        for cause in ("history_trimmed", "epoch_changed"):
            self.resets.labels(cause=cause)


@dataclass(eq=False)
class _Batch:
    channel: str
    waiters: list[tuple[Position, asyncio.Future[Recovery]]] = field(default_factory=list)


class ReplayDesk:
    def __init__(
        self,
        channel_log: ChannelLog,
        metrics: RecoveryMetrics,
        *,
        concurrency: int,
        queue_size: int,
        wait_seconds: float,
    ) -> None:
        self._log = channel_log
        self._metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_size = queue_size
        self._wait = wait_seconds
        self._open: dict[str, _Batch] = {}  # waiting, not yet reading, by channel
        self._queued = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def retry_after(self) -> int:
        return max(1, round(self._wait / 2))

    async def recover(self, channel: str, since: Position) -> Recovery:
        """What follows ``since``, or :class:`ReplayUnavailable`."""
        if self._queued >= self._queue_size:
            self._metrics.replays.labels(result="refused").inc()
            raise ReplayUnavailable("too many subscriptions are resuming", self.retry_after)
        batch = self._open.get(channel)
        if batch is None:
            batch = self._open[channel] = _Batch(channel)
            task = asyncio.create_task(self._serve(batch), name=f"replay:{channel}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        future: asyncio.Future[Recovery] = asyncio.get_running_loop().create_future()
        batch.waiters.append((since, future))
        self._queued += 1
        self._metrics.queued.inc()
        try:
            found = await future
        except ReplayUnavailable:
            self._metrics.replays.labels(result="refused").inc()
            raise
        self._metrics.replays.labels(result="served" if found.reset is None else "reset").inc()
        if found.reset is not None:
            self._metrics.resets.labels(cause=found.cause).inc()
        return found

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, batch: _Batch) -> None:
        deadline = asyncio.get_running_loop().time() + self._wait
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            self._settle(batch, ReplayUnavailable("history is busy", self.retry_after))
            return
        try:
            # From here on, later arrivals start a new batch: this one's start is fixed.
            self._settle_queue(batch)
            results = await self._read_retrying(batch, deadline)
        except ReplayUnavailable as exc:
            self._fail(batch, exc)
            return
        finally:
            self._slots.release()
        for (_, future), found in zip(batch.waiters, results, strict=True):
            if not future.done():
                future.set_result(found)

    def _settle_queue(self, batch: _Batch) -> None:
        if self._open.get(batch.channel) is batch:
            del self._open[batch.channel]
        self._queued -= len(batch.waiters)
        self._metrics.queued.dec(len(batch.waiters))

    def _settle(self, batch: _Batch, error: ReplayUnavailable) -> None:
        self._settle_queue(batch)
        self._fail(batch, error)

    @staticmethod
    def _fail(batch: _Batch, error: ReplayUnavailable) -> None:
        for _, future in batch.waiters:
            if not future.done():
                future.set_exception(error)

    async def _read_retrying(self, batch: _Batch, deadline: float) -> list[Recovery]:
        delay = 0.05
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._read(batch)
            except TimeoutError:
                raise ReplayUnavailable(
                    "history did not answer in time", self.retry_after
                ) from None
            except Exception as exc:
                if loop.time() + delay > deadline:
                    raise ReplayUnavailable(
                        f"history unavailable ({type(exc).__name__})", self.retry_after
                    ) from exc
                log.warning("replay.read_retry", channel=batch.channel, error=repr(exc))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 1.0)

    async def _read(self, batch: _Batch) -> list[Recovery]:
        """One read per epoch among the waiters, sliced for each of them."""
        shared: dict[str, Recovery] = {}
        oldest: dict[str, Position] = {}
        for since, _ in batch.waiters:
            first = oldest.get(since.epoch)
            if first is None or since.offset < first.offset:
                oldest[since.epoch] = since
        for epoch, since in oldest.items():
            self._metrics.reads.inc()
            shared[epoch] = await recover(self._log, batch.channel, since)
        results = []
        for since, _ in batch.waiters:
            found = _slice(shared[since.epoch], oldest[since.epoch], since)
            if found is None:  # beyond what the shared read could decide: read alone
                self._metrics.reads.inc()
                found = await recover(self._log, batch.channel, since)
            results.append(found)
        return results


def _slice(shared: Recovery, read_from: Position, since: Position) -> Recovery | None:
    """``since``'s part of a recovery read from ``read_from`` (same epoch, not later)."""
    if since.offset == read_from.offset:
        return shared
    if shared.reset is None:
        head = shared.envelopes[-1].offset if shared.envelopes else read_from.offset
        if since.offset > head:
            return None  # a position past the head: recover() decides
        return Recovery(None, [e for e in shared.envelopes if e.offset > since.offset])
    if shared.cause == "epoch_changed":
        return shared  # the same for every position of the lost epoch
    return None  # trimmed for the oldest; a later one may still be covered
