"""Delivery numbers: the percentile estimate, the hot-path counter, the memory store;
and the presence history's memory store and sampler."""

from __future__ import annotations

import math
import random
import time

import pytest

from streams.delivery_stats import (
    DeliveryStats,
    MemoryDeliveryStore,
    MinuteCounter,
    empty_row,
)
from streams.latency import LATENCY_BUCKETS, SLOTS, quantile
from streams.presence import Member
from streams.presence_history import MemoryPresenceHistory, PresenceSampler, sample_of
from streams.presence_memory import MemoryPresence


def counts(**per_bucket: int) -> list[int]:
    """Per-bucket counts from {"b<i>": n}; the rest 0."""
    row = [0] * SLOTS
    for name, n in per_bucket.items():
        row[int(name[1:])] = n
    return row


def prometheus_histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile (promql/quantile.go), ported line by line: buckets
    as (upper bound, cumulative count), the last one +Inf."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    observations = cumulative[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i, (_, c) in enumerate(cumulative[:-1]) if c >= rank), len(cumulative) - 1)
    if b == len(cumulative) - 1:
        return cumulative[-2][0]
    if b == 0 and cumulative[0][0] <= 0:
        return cumulative[0][0]
    start, end, count = 0.0, cumulative[b][0], cumulative[b][1]
    if b > 0:
        start = cumulative[b - 1][0]
        count -= cumulative[b - 1][1]
        rank -= cumulative[b - 1][1]
    return start + (end - start) * (rank / count)


def as_cumulative(row: list[int]) -> list[tuple[float, float]]:
    out, total = [], 0
    for bound, n in zip([*LATENCY_BUCKETS, math.inf], row, strict=True):
        total += n
        out.append((float(bound), float(total)))
    return out


def test_percentiles_interpolate_inside_the_bucket_the_rank_falls_in() -> None:
    # 10 at <=1 ms, 20 in (1, 2.5], 30 in (2.5, 5], 40 in (5, 10] ms.
    row = counts(b0=10, b1=20, b2=30, b3=40)
    assert quantile(0.05, row) == pytest.approx(0.0005)  # rank 5 of 10 in [0, 1 ms]
    assert quantile(0.5, row) == pytest.approx(0.0025 + 0.0025 * 20 / 30)  # 4.17 ms
    assert quantile(0.95, row) == pytest.approx(0.005 + 0.005 * 35 / 40)  # 9.375 ms
    assert quantile(0.99, row) == pytest.approx(0.005 + 0.005 * 39 / 40)  # 9.875 ms
    assert quantile(1.0, row) == pytest.approx(0.01)


def test_percentiles_at_the_edges() -> None:
    assert quantile(0.5, [0] * SLOTS) is None  # nothing observed
    assert quantile(0.99, counts(b11=5)) == 2.5  # all above the last bound: that bound
    assert quantile(0.5, counts(b3=1)) == pytest.approx(0.0075)  # one: the bucket's middle
    # A rank exactly at a bucket's top is that bucket's upper bound.
    assert quantile(0.5, counts(b0=5, b5=5)) == pytest.approx(0.001)
    with pytest.raises(ValueError):
        quantile(1.5, counts(b0=1))
    with pytest.raises(ValueError):
        quantile(0.5, [1, 2])


def test_percentiles_match_prometheus_histogram_quantile_on_random_counts() -> None:
    rng = random.Random(20)
    for _ in range(500):
        row = [rng.choice([0, 0, 1, 3, 17, 250]) for _ in range(SLOTS)]
        if not sum(row):
            continue
        for q in (0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
            expected = prometheus_histogram_quantile(q, as_cumulative(row))
            assert quantile(q, row) == pytest.approx(expected), (q, row)


def test_the_counter_buckets_each_delivery_by_minute_and_latency() -> None:
    counter = MinuteCounter()
    minute = 29_000_000
    t = minute * 60 + 5.0
    counter.add(t, 0.0004)  # <= 1 ms
    counter.add(t + 1, 0.001)  # exactly 1 ms: the le="0.001" bucket, as Prometheus
    counter.add(t + 2, 0.003, deliveries=10)  # a group of ten members
    counter.add(t + 60, 9.0)  # next minute, above every bound
    rows = counter.take()
    assert sorted(rows) == [minute, minute + 1]
    assert rows[minute][0] == 12
    assert rows[minute][1:4] == [2, 0, 10]
    assert rows[minute + 1][0] == 1 and rows[minute + 1][-1] == 1
    assert counter.take() == {}  # taken once
    counter.add(t, 0.002)
    counter.give_back(rows, oldest=minute + 1)  # minute is too old to keep
    again = counter.take()
    assert again[minute][0] == 1  # only the new one
    assert again[minute + 1][0] == 1


async def test_the_memory_store_sums_processes_and_reads_gaps_as_absent() -> None:
    store = MemoryDeliveryStore()
    minute = 29_000_000
    now = minute * 60 + 30.0
    a, b = empty_row(), empty_row()
    a[0], a[1 + 2] = 3, 3  # three in (2.5, 5] ms
    b[0], b[1 + 3] = 1, 1  # one in (5, 10] ms
    await store.add("a", now - 61, {minute - 1: a}, minute - 1)
    await store.add("a", now, {minute: a}, minute)
    await store.add("b", now, {minute: b}, minute)
    readout = await store.read(now, 61, 60.0)
    assert readout.first == minute - 60 and readout.last == minute
    assert readout.processes == 2
    assert sorted(readout.minutes) == [minute - 1, minute]  # the rest: never reported
    assert readout.minutes[minute].processes == 2
    window = readout.window(2)
    assert window.delivered == 3 + 3 + 1
    assert window.buckets[2] == 6 and window.buckets[3] == 1
    # "b" reported 30 s ago, "a" now: a 10 s window counts one.
    assert (await store.read(now + 20, 61, 10.0)).processes == 0
    assert (await store.read(now, 61, 10.0)).processes == 2


async def test_delivery_stats_flush_increments_and_count_the_process_once_a_minute() -> None:
    store = MemoryDeliveryStore()
    counter = MinuteCounter()
    stats = DeliveryStats(counter, store, flush_seconds=3600)
    await stats.start()  # flushes once: the process reports from the start
    try:
        now = time.time()
        for _ in range(5):
            counter.add(now, 0.002)
        await stats.flush()
        await stats.flush()  # nothing new: adds nothing
        readout = await stats.read(fresh_within=0)
        assert readout.processes == 1
        assert readout.window(2).delivered == 5
        assert readout.minutes[int(now // 60)].processes == 1  # not once per flush
    finally:
        await stats.close()


async def test_presence_history_keeps_one_sample_per_slot_and_counts_absent_as_zero() -> None:
    presence = MemoryPresence(queue_size=10)
    store = MemoryPresenceHistory(interval=60)
    sampler = PresenceSampler(presence, store)
    await presence.join("institution:northwood", "northwood", Member("u1", "U1", "student"))
    await presence.join("institution:northwood", "northwood", Member("u1", "U1", "student"))
    await presence.join(
        "institution:northwood:classroom:nw-math-101", "northwood", Member("u2", "U2", "student")
    )
    await presence.join("user:u2", "northwood", Member("u2", "U2", "student"))
    sample = sample_of(await presence.census())
    # A user's private channel is not kept; a member counts once however many tabs.
    assert sample == {
        "institution:northwood": 1,
        "institution:northwood:classroom:nw-math-101": 1,
        "online@northwood": 2,
    }
    assert await sampler.sample(100) is True
    assert await sampler.sample(100) is False  # taken: the first sample stays
    assert await store.write(100, {"institution:northwood": 99}, "other") is False
    series = await sampler.read("institution:northwood", 3, now=100 * 60 + 1)
    assert (series.first, series.last) == (98, 100)
    assert series.counts == {100: 1}  # 98 and 99: no sample
    empty = await sampler.read("institution:northwood:department:nw-sci", 1, now=100 * 60 + 1)
    assert empty.counts == {100: 0}  # sampled, nobody there
    # The current slot, not sampled yet, is left out rather than shown as a gap.
    later = await sampler.read("online@northwood", 2, now=101 * 60 + 1)
    assert (later.first, later.last) == (99, 100)
    assert later.counts == {100: 2}
