"""The consumer-lag arithmetic and alert rules (streams/kafka_lag.py,
streams/lag_alerts.py) and the fallback of the group-leave patch
(streams/kafka_group.py), without a broker: they are pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from streams.kafka_group import patch_leave
from streams.kafka_lag import LagSnapshot, PartitionLag, compute
from streams.lag_alerts import NEVER, LagRules

AT = datetime(2026, 12, 5, 12, 0, 30, tzinfo=UTC)


def snapshot(*parts: tuple[int, int], updated: datetime | None = None) -> LagSnapshot:
    """Partitions of topic ``t`` as (end offset, next offset)."""
    rows = tuple(
        PartitionLag("t", i, end, nxt, max(0, end - nxt), None, updated)
        for i, (end, nxt) in enumerate(parts)
    )
    return LagSnapshot("g", AT, rows)


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 5)),
        st.tuples(st.integers(0, 50), st.integers(0, 1000)),
    ),
    st.data(),
)
def test_lag_is_end_minus_what_was_applied_from_the_log_start(
    ends: dict[tuple[str, int], tuple[int, int]], data: st.DataObject
) -> None:
    ends = {k: (start, start + extra) for k, (start, extra) in ends.items()}
    stored = {
        k: (data.draw(st.integers(0, end)), None, None)
        for k, (_, end) in ends.items()
        if data.draw(st.booleans())
    }
    lag = compute("g", ends, stored, AT)
    assert [(p.topic, p.partition) for p in lag.partitions] == sorted(ends)
    for p in lag.partitions:
        start, end = ends[(p.topic, p.partition)]
        applied_upto = stored.get((p.topic, p.partition), (start, None, None))[0]
        assert p.lag == end - max(start, applied_upto) >= 0
    assert lag.total == sum(p.lag for p in lag.partitions)


def test_an_unreadable_lag_is_unknown_not_zero() -> None:
    broken = LagSnapshot("g", AT, error="timed out")
    assert broken.total is None
    assert LagRules(lag_threshold=1, stall_seconds=1).check(broken, 0.0) == []


def test_stall_needs_lag_and_no_progress_for_the_whole_window() -> None:
    rules = LagRules(lag_threshold=10**9, stall_seconds=5)
    assert rules.check(snapshot((0, 0)), 0.0) == []  # idle, nothing waiting
    assert rules.check(snapshot((10, 0)), 1.0) == []  # events arrived: the clock starts
    assert rules.check(snapshot((10, 0)), 5.9) == []  # 4.9 s without progress
    assert rules.check(snapshot((12, 4)), 6.5) == []  # progress: starts again
    assert rules.check(snapshot((12, 4)), 11.0) == []
    (stall,) = rules.check(snapshot((12, 4)), 11.5)  # 5 s of lag without progress
    assert (stall.alert.rule, stall.alert.value, stall.alert.threshold) == ("consumer_stall", 8, 5)
    assert stall.partitions == ("t/0",)
    assert stall.alert.bucket == NEVER  # nothing was ever applied (no updated_at)
    assert rules.check(snapshot((13, 4)), 20.0) == []  # same episode: raised once
    assert rules.check(snapshot((13, 13)), 21.0) == []  # caught up: episode over
    assert rules.check(snapshot((14, 13)), 22.0) == []
    assert len(rules.check(snapshot((14, 13)), 27.0)) == 1  # a new episode


def test_a_stall_is_identified_by_the_groups_last_progress() -> None:
    """Every server reads the same updated_at from Postgres, so every server builds
    the same alert key and alerts_fired records it once."""
    last = AT - timedelta(seconds=40)
    rules = LagRules(lag_threshold=10**9, stall_seconds=1)
    rules.check(snapshot((5, 2), (3, 3), updated=last), 0.0)
    (stall,) = rules.check(snapshot((5, 2), (3, 3), updated=last), 2.0)
    assert stall.alert.bucket == last and stall.partitions == ("t/0",)


def test_lag_over_the_threshold_alerts_once_per_episode() -> None:
    rules = LagRules(lag_threshold=100, stall_seconds=3600)
    assert rules.check(snapshot((100, 0)), 0.0) == []  # at the threshold: not over
    (over,) = rules.check(snapshot((80, 0), (21, 0)), 1.0)
    assert (over.alert.rule, over.alert.value, over.alert.threshold) == ("consumer_lag", 101, 100)
    assert over.alert.bucket == AT.replace(second=0)
    assert over.partitions == ("t/0", "t/1")
    assert rules.check(snapshot((500, 0)), 2.0) == []
    assert rules.check(snapshot((500, 450)), 3.0) == []  # back under
    assert len(rules.check(snapshot((700, 450)), 4.0)) == 1


class _Coordinator:
    """Has the attributes patch_leave relies on, and nothing else."""

    generation = 0
    member_id = "m"
    group_id = "g"
    _group_instance_id = None

    async def _send_req(self, request: object) -> object:
        return None

    async def _maybe_leave_group(self) -> None:
        return None

    def reset_generation(self) -> None:
        return None


def test_the_leave_patch_keeps_aiokafka_as_it_is_outside_what_was_tested() -> None:
    for leave in (True, False):
        assert patch_leave(_Coordinator(), leave=leave, version="0.14.0")
        assert not patch_leave(_Coordinator(), leave=leave, version="0.15.0")
        assert not patch_leave(_Coordinator(), leave=leave, version="0.10.2")
        assert not patch_leave(object(), leave=leave, version="0.14.0")
        coordinator = _Coordinator()
        patch_leave(coordinator, leave=leave, version="1.0.0")
        stock = coordinator._maybe_leave_group.__func__  # type: ignore[attr-defined]
        assert stock is _Coordinator._maybe_leave_group


def test_an_alert_that_could_not_be_recorded_is_raised_again() -> None:
    rules = LagRules(lag_threshold=1, stall_seconds=1)
    alerts = rules.check(snapshot((5, 0)), 0.0) + rules.check(snapshot((5, 0)), 1.0)
    assert sorted(a.alert.rule for a in alerts) == ["consumer_lag", "consumer_stall"]
    assert rules.check(snapshot((5, 0)), 2.0) == []
    rules.retry_later(alerts)
    assert len(rules.check(snapshot((5, 0)), 3.0)) == 2
