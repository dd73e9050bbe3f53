"""Latency buckets and the percentile estimate Prometheus makes from them.

The buckets are those of ``edumatrix_delivery_latency_seconds`` (``api/metrics.py``
uses this tuple), so a percentile from the deployment-wide per-minute counts
(``streams/delivery_stats.py``) is the one ``histogram_quantile`` would give from
the same observations.
"""

from __future__ import annotations

from collections.abc import Sequence

# Upper bounds in seconds ("le"); a last, implicit bucket holds everything above
# (+Inf). Fine below 50 ms, where the delivery and publish targets are.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)
# Counts per bucket, not cumulative: len(LATENCY_BUCKETS) finite buckets, then +Inf.
SLOTS = len(LATENCY_BUCKETS) + 1


def quantile(
    q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS
) -> float | None:
    """The ``q``-quantile (0..1) of observations counted per bucket, in seconds.

    The same estimate as Prometheus's ``histogram_quantile``: find the bucket the
    rank falls in and interpolate linearly inside it, from its lower bound (0 for
    the first bucket) to its upper bound. A rank in the +Inf bucket gives the
    highest finite bound. None when there are no observations. ``counts`` are per
    bucket (``len(bounds) + 1`` of them, the last one +Inf), not cumulative.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be between 0 and 1")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"expected {len(bounds) + 1} counts, got {len(counts)}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0  # observations in the buckets before the current one
    for i, upper in enumerate(bounds):
        in_bucket = counts[i]
        if below + in_bucket >= rank and in_bucket > 0:
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (upper - lower) * ((rank - below) / in_bucket)
        below += in_bucket
    return float(bounds[-1])
