"""No record can stop a consumer: whatever the bytes, ``decode_event`` raises only
``EventError`` and the aggregator turns a bad record into one bounded dead letter,
commits its offset and goes on, also when the dead letter cannot be written.

The aggregator runs on a real SQLite database; the dead-letter producer is a fake
at the sink's seam (``streams.dead_letter.Producer``), so failures can be scripted.
The same path against a real broker is tests/integration/test_kafka_poison.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, text

from db.analytics_models import ConsumerOffset, EventMinute
from db.analytics_write import Thresholds
from db.engine import Sessions, create_engine, make_sessionmaker
from db.migrate import upgrade
from streams.aggregator import Aggregator, RawRecord, triage
from streams.dead_letter import DeadLetter, KafkaDeadLetters, encode
from streams.events import REASONS, Event, EventError, decode_event

GOOD = {"type": "activity.page_view", "institutionId": "northwood", "userId": "u1"}
LIMITS = Thresholds(errors_per_minute=10_000, failed_logins_per_minute=10_000)


def good(at: str = "2026-11-27T12:00:00Z", institution: str = "northwood") -> bytes:
    return json.dumps({**GOOD, "institutionId": institution, "occurredAt": at}).encode()


def at_limit(when: str) -> bytes:
    return json.dumps({"type": "a.b", "institutionId": "x", "occurredAt": when}).encode()


# --- decode_event: only EventError or a valid Event, whatever comes in -------------------


def decoded_or_error(raw: bytes | None) -> Event | EventError:
    try:
        event = decode_event(raw)
    except EventError as exc:
        assert exc.code in REASONS
        assert 0 < len(str(exc)) <= 500
        return exc
    assert event.occurred_at.utcoffset() == timedelta(0)
    return event


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.none())
@example(b"\xff\xfe{}")
@example('{"type": "a.b", "institutionId": "\u00e9"}'.encode("utf-16"))
def test_arbitrary_bytes_are_an_event_or_an_event_error(raw: bytes | None) -> None:
    decoded_or_error(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
IDS = st.sampled_from(["northwood", "nw-1", "a" * 65, "", "bad id"]) | JSON
FIELDS = {
    "id": IDS,
    "institutionId": IDS,
    "userId": IDS,
    "departmentId": IDS,
    "occurredAt": st.sampled_from(["2026-11-27T12:00:00Z", "2026-11-27T12:00:00"])
    | st.datetimes(timezones=st.timezones()).map(datetime.isoformat)
    | JSON,
    "data": st.dictionaries(st.text(max_size=8), JSON) | JSON,
}


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["a.b", "error.x", "Bad", ""]) | JSON},
        optional=FIELDS,
    )
    | JSON
)
def test_arbitrary_json_is_an_event_or_an_event_error(value: Any) -> None:
    decoded_or_error(json.dumps(value).encode())


OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
# Plain st.datetimes() rarely lands within a day of year 1 or 9999 (400 examples
# never did here); the edges get their own share of the examples.
DATETIMES = (
    st.datetimes(min_value=datetime.min, max_value=datetime.max)
    | st.datetimes(max_value=datetime(1, 1, 2))
    | st.datetimes(min_value=datetime(9999, 12, 30))
)


@settings(max_examples=400, deadline=None)
@given(DATETIMES, OFFSETS)
@example(datetime(9999, 12, 31, 23, 59, 59), timezone(timedelta(hours=-5)))
@example(datetime(1, 1, 1), timezone(timedelta(hours=5)))
@example(datetime(9999, 12, 31, 23, 59, 59, 999_999), timezone(timedelta(minutes=-1)))
@example(datetime(1, 1, 1, 5), timezone(timedelta(hours=5)))
def test_any_datetime_and_offset_is_an_event_in_utc_or_overflow(
    when: datetime, tz: timezone
) -> None:
    aware = when.replace(tzinfo=tz)
    result = decoded_or_error(at_limit(aware.isoformat()))
    try:
        utc = aware.astimezone(UTC)
    except OverflowError:
        assert isinstance(result, EventError) and result.code == "overflow"
    else:
        assert isinstance(result, Event) and result.occurred_at == utc


@settings(max_examples=200, deadline=None)
@given(DATETIMES, st.timezones())
@example(datetime(9999, 12, 31, 23, 59, 59), ZoneInfo("America/New_York"))
@example(datetime(1, 1, 1), ZoneInfo("Asia/Karachi"))
def test_any_named_timezone_is_an_event_or_an_event_error(when: datetime, zone: tzinfo) -> None:
    try:
        stamp = when.replace(tzinfo=zone).isoformat()
    except OverflowError:  # the zone's own rules end before the limit: nothing to send
        return
    decoded_or_error(at_limit(stamp))


def test_the_two_limit_timestamps_are_overflow_not_a_crash() -> None:
    for when in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"):
        with pytest.raises(EventError) as caught:
            decode_event(at_limit(when))
        assert caught.value.code == "overflow"


def test_reasons_of_the_obvious_cases() -> None:
    cases = {
        None: "not_json",
        b"not json": "not_json",
        b"\xff\xfe": "not_json",
        b"[1]": "invalid",
        json.dumps({"type": "a.b"}).encode(): "invalid",
        b" " * 20_000: "too_large",
    }
    for raw, code in cases.items():
        with pytest.raises(EventError) as caught:
            decode_event(raw)
        assert caught.value.code == code, raw


# --- one dead letter per bad record, bounded ------------------------------------------------


def check_letter(letter: DeadLetter, limit: int) -> dict[str, Any]:
    value, headers = encode(letter, limit)
    assert len(value) <= 6 * limit + 4_000
    body = json.loads(value)
    raw = letter.record.value or b""
    assert body["size"] == len(raw) == int(dict(headers)["size"])
    assert body["sha256"] == hashlib.sha256(raw).hexdigest()
    assert body["truncated"] == (len(raw) > limit)
    assert (body["topic"], body["partition"], body["offset"]) == (
        letter.record.topic,
        letter.record.partition,
        letter.record.offset,
    )
    assert dict(headers)["source"] == letter.source.encode()
    assert body["code"] == letter.code and body["reason"] == letter.reason
    copy = (
        body["value"].encode()
        if body["valueEncoding"] == "utf-8"
        else base64.b64decode(body["value"])
    )
    assert raw.startswith(copy) and len(copy) <= limit
    assert len(copy) >= min(len(raw), limit) - 3  # a cut character at most
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.none(),
            st.builds(lambda v: json.dumps(v).encode(), JSON),
            st.builds(lambda t: t.encode(), st.text(max_size=300)),
            st.just(good()),
        ),
        max_size=30,
    ),
    st.sampled_from([0, 1, 7, 64, 4096]),
)
def test_triage_gives_every_bad_record_one_bounded_dead_letter(
    values: list[bytes | None], limit: int
) -> None:
    batch = [RawRecord("src", 2, 100 + i, v) for i, v in enumerate(values)]
    consumed, letters = triage(batch)
    assert [(c.topic, c.partition, c.offset) for c in consumed] == [
        (r.topic, r.partition, r.offset) for r in batch
    ]
    assert [d.record for d in letters] == [
        r for r, c in zip(batch, consumed, strict=True) if c.event is None
    ]
    for letter in letters:
        check_letter(letter, limit)


def test_big_records_give_small_dead_letters() -> None:
    cases = {
        "two_mb": b"x" * 2_000_000,
        "e_acute": ("é" * 200_000).encode(),  # 400 KB; json.dumps escaped it to 1.2 MB
        "binary": bytes(range(256)) * 8_000,
        "nul": b"\x00" * 100_000,
    }
    for name, raw in cases.items():
        letter = DeadLetter(RawRecord("src", 0, 7, raw), "too_large", "event larger than 16384")
        body = check_letter(letter, 16_384)
        assert body["truncated"], name
        assert len(encode(letter, 4096)[0]) < 30_000, name
    # A copy that would end inside a two-byte "é" stays text, one character shorter.
    odd = DeadLetter(RawRecord("s", 0, 1, ("é" * 200_000).encode()), "too_large", "big")
    body = check_letter(odd, 16_383)
    assert body["valueEncoding"] == "utf-8" and body["value"] == "é" * 8_191


# --- the aggregator on a real database ------------------------------------------------------


class Recording:
    """A producer at the sink's seam: records what reached it; its first ``times``
    sends fail with ``failure`` (raised by ``send`` itself if ``at_send``); the
    dead-letter topic has ``partitions`` partitions (metadata fails ``no_metadata``
    times first)."""

    def __init__(
        self,
        failure: BaseException | None = None,
        times: int = 0,
        *,
        at_send: bool = False,
        partitions: int = 3,
        no_metadata: int = 0,
    ) -> None:
        self.failure, self.times, self.at_send = failure, times, at_send
        self.partitions, self.no_metadata = partitions, no_metadata
        self.sent: list[dict[str, Any]] = []
        self.calls = 0
        self.metadata_calls = 0

    async def partitions_for(self, topic: str) -> set[int]:
        self.metadata_calls += 1
        if self.metadata_calls <= self.no_metadata:
            raise KafkaTimeoutError()
        return set(range(self.partitions))

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]],
    ) -> asyncio.Future[Any]:
        self.calls += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failure is not None and self.calls <= self.times:
            if self.at_send:
                raise self.failure
            future.set_exception(self.failure)
            return future
        extra = {"_topic": topic, "_headers": dict(headers), "_partition": partition}
        self.sent.append(json.loads(value) | extra)
        future.set_result(None)
        return future


class Gate(Recording):
    """Acknowledges nothing until ``expected`` messages were handed over: a sink
    that awaited each send before the next one would wait here until its deadline."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.held: list[asyncio.Future[Any]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]],
    ) -> asyncio.Future[Any]:
        self.calls += 1
        self.sent.append(json.loads(value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append(future)
        if len(self.held) >= self.expected:
            for waiting in self.held:
                waiting.set_result(None)
        return future


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'poison.db'}"
    upgrade(url)
    yield url


def sqlite_exec(url: str, sql: str) -> None:
    with sqlite3.connect(url.split("///", 1)[1]) as conn:
        conn.executescript(sql)


REGISTRIES: dict[int, CollectorRegistry] = {}


def aggregator(sessions: Sessions, producer: Recording | None, deadline: float = 2.0) -> Aggregator:
    sink = KafkaDeadLetters(producer, "dlq", deadline=deadline, first_backoff=0.01)
    registry = CollectorRegistry()
    agg = Aggregator(
        sessions,
        group="g",
        thresholds=LIMITS,
        dead_letter=sink if producer is not None else None,
        registry=registry,
    )
    REGISTRIES[id(agg)] = registry
    return agg


def metric(agg: Aggregator, name: str, **labels: str) -> float:
    return REGISTRIES[id(agg)].get_sample_value(name, labels) or 0.0


async def counted(sessions: Sessions) -> tuple[int, dict[tuple[str, int], int]]:
    async with sessions() as session:
        events = await session.scalar(select(func.coalesce(func.sum(EventMinute.count), 0)))
        rows = await session.execute(
            select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset)
        )
        return int(events or 0), {(t, p): n for t, p, n in rows}


def poison_batch() -> list[RawRecord]:
    values = [
        good(),
        b"x" * 2_000_000,
        good(),
        ("é" * 200_000).encode(),
        at_limit("9999-12-31T23:59:59-05:00"),
        good(),
        at_limit("0001-01-01T00:00:00+05:00"),
        b"{not json",
        None,
        good(),
    ]
    return [RawRecord("src", 0, i, v) for i, v in enumerate(values)]


async def test_bad_records_become_dead_letters_and_the_batch_commits(db: str) -> None:
    engine = create_engine(db)
    producer = Recording()
    agg = aggregator(make_sessionmaker(engine), producer)
    try:
        applied = await agg.handle(poison_batch())
        assert len(applied.events) == 4
        assert await counted(agg.sessions) == (4, {("src", 0): 10})
        assert [(d["offset"], d["code"]) for d in producer.sent] == [
            (1, "too_large"),
            (3, "too_large"),
            (4, "overflow"),
            (6, "overflow"),
            (7, "not_json"),
            (8, "not_json"),
        ]
        assert all(d["_topic"] == "dlq" and len(d["value"]) <= 4096 for d in producer.sent)
        assert metric(agg, "edumatrix_events_invalid_total", reason="too_large") == 2
        assert metric(agg, "edumatrix_events_invalid_total", reason="overflow") == 2
        assert metric(agg, "edumatrix_events_invalid_total", reason="not_json") == 2
        assert metric(agg, "edumatrix_events_dead_lettered_total") == 6
        assert metric(agg, "edumatrix_dead_letters_parked_total") == 0
        # A replay of the batch applies nothing and writes no dead letter twice.
        again = await agg.handle(poison_batch())
        assert (len(again.events), again.skipped, len(producer.sent)) == (0, 10, 6)
    finally:
        await engine.dispose()


async def test_dead_letters_are_retried_then_delivered(db: str) -> None:
    engine = create_engine(db)
    for producer in (
        Recording(KafkaConnectionError("broker away"), times=10),  # two passes of 5
        Recording(KafkaTimeoutError(), times=1, at_send=True),  # no metadata yet
    ):
        agg = aggregator(make_sessionmaker(engine), producer)
        topic_batch = [RawRecord(f"t{id(producer)}", 0, i, b"bad") for i in range(5)]
        await agg.handle(topic_batch)
        assert sorted(d["offset"] for d in producer.sent) == [0, 1, 2, 3, 4]
        assert metric(agg, "edumatrix_dead_letters_parked_total") == 0
        assert metric(agg, "edumatrix_events_dead_lettered_total") == 5
    await engine.dispose()


@pytest.mark.parametrize(
    "failure", [KafkaConnectionError("down"), MessageSizeTooLargeError(), RuntimeError("bug")]
)
async def test_unsendable_dead_letters_are_parked_and_the_batch_still_commits(
    db: str, failure: BaseException
) -> None:
    engine = create_engine(db)
    producer = Recording(failure, times=10**6)
    agg = aggregator(make_sessionmaker(engine), producer, deadline=0.3)
    try:
        batch = [RawRecord("src", 1, 0, good()), RawRecord("src", 1, 1, b"bad")]
        batch += [RawRecord("src", 1, 2, good())]
        started = asyncio.get_running_loop().time()
        applied = await agg.handle(batch)
        assert asyncio.get_running_loop().time() - started < 10  # bounded, not forever
        assert len(applied.events) == 2
        assert await counted(agg.sessions) == (2, {("src", 1): 3})
        assert metric(agg, "edumatrix_dead_letters_parked_total") == 1
        assert metric(agg, "edumatrix_events_dead_lettered_total") == 0
        assert metric(agg, "edumatrix_events_invalid_total", reason="not_json") == 1
        retried = isinstance(failure, KafkaConnectionError)
        assert (producer.calls > 1) == retried  # a refused message is not retried
    finally:
        await engine.dispose()


async def test_a_batch_of_dead_letters_is_sent_concurrently(db: str) -> None:
    engine = create_engine(db)
    producer = Gate(expected=200)
    agg = aggregator(make_sessionmaker(engine), producer, deadline=5.0)
    try:
        await agg.handle([RawRecord("src", 0, i, b"garbage") for i in range(200)])
        assert len(producer.sent) == 200 and producer.calls == 200
        assert metric(agg, "edumatrix_events_dead_lettered_total") == 200
        assert metric(agg, "edumatrix_dead_letters_parked_total") == 0
    finally:
        await engine.dispose()


async def test_letters_of_a_source_partition_share_a_dead_letter_partition(db: str) -> None:
    """Source partition modulo the dead-letter topic's partitions: one partition's
    letters stay in offset order, and a batch makes few producer batches."""
    engine = create_engine(db)
    producer = Recording(partitions=3)
    agg = aggregator(make_sessionmaker(engine), producer)
    try:
        batch = [RawRecord("src", p, i, b"bad") for p in (0, 1, 4) for i in range(3)]
        await agg.handle(batch)
        await agg.handle([RawRecord("src", 5, 0, b"bad")])
        assert [(d["partition"], d["offset"], d["_partition"]) for d in producer.sent] == [
            (p, i, p % 3) for p in (0, 1, 4) for i in range(3)
        ] + [(5, 0, 2)]
        assert producer.metadata_calls == 1  # asked once
    finally:
        await engine.dispose()


async def test_dead_letters_wait_for_metadata_like_a_send(db: str) -> None:
    """No metadata for the dead-letter topic yet: retried with the letters, then
    delivered; never metadata within the deadline: parked."""
    engine = create_engine(db)
    try:
        producer = Recording(no_metadata=2)
        agg = aggregator(make_sessionmaker(engine), producer)
        await agg.handle([RawRecord("m1", 0, i, b"bad") for i in range(3)])
        assert sorted(d["offset"] for d in producer.sent) == [0, 1, 2]
        assert metric(agg, "edumatrix_dead_letters_parked_total") == 0
        never = Recording(no_metadata=10**6)
        agg = aggregator(make_sessionmaker(engine), never, deadline=0.3)
        await agg.handle([RawRecord("m2", 0, i, b"bad") for i in range(3)])
        assert never.sent == [] and never.calls == 0
        assert metric(agg, "edumatrix_dead_letters_parked_total") == 3
        assert await counted(agg.sessions) == (0, {("m1", 0): 3, ("m2", 0): 3})
    finally:
        await engine.dispose()


async def test_a_record_whose_write_fails_alone_is_dead_lettered(db: str) -> None:
    sqlite_exec(
        db,
        "CREATE TRIGGER poison BEFORE INSERT ON event_minutes "
        "WHEN NEW.institution_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
    )
    engine = create_engine(db)
    producer = Recording()
    agg = aggregator(make_sessionmaker(engine), producer)
    try:
        values = [good()] * 5 + [good(institution="poison")] + [good()] * 3 + [b"[]"]
        batch = [RawRecord("src", 3, 40 + i, v) for i, v in enumerate(values)]
        applied = await agg.handle(batch)
        assert len(applied.events) == 8
        assert await counted(agg.sessions) == (8, {("src", 3): 50})
        assert [(d["offset"], d["code"]) for d in producer.sent] == [
            (49, "invalid"),
            (45, "aggregate_failed"),
        ]
        assert "poisoned row" in producer.sent[1]["reason"]
        assert json.loads(producer.sent[1]["value"])["institutionId"] == "poison"
        assert metric(agg, "edumatrix_events_invalid_total", reason="aggregate_failed") == 1
    finally:
        await engine.dispose()


async def test_a_store_that_fails_for_every_record_raises_without_dead_letters(db: str) -> None:
    """Not the record's fault: nothing is dead-lettered, no offset moves, the error
    reaches the consume loop (whose retry is the broker-outage work)."""
    sqlite_exec(
        db,
        "CREATE TRIGGER broken BEFORE INSERT ON consumer_offsets "
        "BEGIN SELECT RAISE(ABORT, 'store broken'); END;",
    )
    engine = create_engine(db)
    producer = Recording()
    agg = aggregator(make_sessionmaker(engine), producer)
    try:
        with pytest.raises(Exception, match="store broken"):
            await agg.handle([RawRecord("src", 0, i, good()) for i in range(4)])
        assert producer.sent == []
        assert await counted(agg.sessions) == (0, {})
    finally:
        await engine.dispose()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=100),
            st.none(),
            st.builds(lambda v: json.dumps(v).encode(), JSON),
            st.builds(
                lambda d, tz: at_limit(d.replace(tzinfo=tz).isoformat()),
                DATETIMES,
                OFFSETS,
            ),
            st.just(good()),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_handle_turns_any_batch_into_aggregates_and_dead_letters_only(
    db: str, values: list[bytes | None]
) -> None:
    """Per record, exactly one of: aggregated, or one dead letter; never an exception."""

    async def run() -> None:
        engine = create_engine(db)
        producer = Recording()
        agg = aggregator(make_sessionmaker(engine), producer)
        topic = "h"
        async with agg.sessions() as session:
            await session.execute(text("DELETE FROM consumer_offsets"))
            await session.commit()
        try:
            batch = [RawRecord(topic, 0, i, v) for i, v in enumerate(values)]
            applied = await agg.handle(batch)
            dead = {d["offset"] for d in producer.sent}
            assert len(dead) == len(producer.sent)
            assert len(applied.events) + len(dead) == len(batch)
            valid = {i for i, v in enumerate(values) if not isinstance(triage_one(v), EventError)}
            assert dead == set(range(len(batch))) - valid
            assert (await counted(agg.sessions))[1][(topic, 0)] == len(batch)
        finally:
            await engine.dispose()

    asyncio.run(run())


def triage_one(value: bytes | None) -> Event | EventError:
    try:
        return decode_event(value)
    except EventError as exc:
        return exc
