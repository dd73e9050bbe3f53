"""What the deployment-wide delivery numbers add to a delivery, in process.

Why: ``Metrics.observe_latency`` runs once per delivered message on the stock path
(once per group fan-out on the multiplexed one), and now also counts the delivery
in this minute's buckets (``streams/delivery_stats.py`` ``MinuteCounter.add``).
This times the call as it is and as it was (the Prometheus histogram alone), and
the counter alone, over several rounds; compare the minimum of each.

    .venv/bin/python bench/delivery_stats_cost.py            # 7 rounds of 200,000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.metrics import Metrics  # noqa: E402
from streams.delivery_stats import MinuteCounter  # noqa: E402
from streams.envelope import Envelope  # noqa: E402


def envelope() -> Envelope:
    return Envelope(
        offset=1,
        epoch="e",
        channel="institution:northwood",
        kind="announcement",
        data={},
        published_at_ms=int(time.time() * 1000) - 3,
    )


def before(metrics: Metrics, item: Envelope) -> None:
    """``observe_latency`` as it was: the histogram only."""
    lag = time.time() - item.published_at_ms / 1000
    metrics.delivery_latency.observe(max(lag, 0.0))


def per_call_ns(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-n", type=int, default=200_000)
    args = parser.parse_args()
    metrics = Metrics()
    item = envelope()
    counter = MinuteCounter()
    now = time.time()
    cases: dict[str, Callable[[], None]] = {
        "histogram only (before)": lambda: before(metrics, item),
        "observe_latency (now)": lambda: metrics.observe_latency(item),
        "MinuteCounter.add alone": lambda: counter.add(now, 0.003),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            ns = per_call_ns(fn, args.n)
            best[name] = min(best.get(name, ns), ns)
    for name, ns in best.items():
        print(f"{name:28s} {ns:7.0f} ns per call (min of {args.rounds} rounds of {args.n:,})")
    added = best["observe_latency (now)"] - best["histogram only (before)"]
    print(f"{'added per delivery':28s} {added:7.0f} ns")


if __name__ == "__main__":
    main()
