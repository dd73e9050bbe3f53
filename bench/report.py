"""Merge shard reports into numbers, and print ours vs baseline as one markdown table.

Why ratios: this machine is shared and has 2 cores, so absolute numbers move from
run to run; both servers are driven in the same run by the same client, and the
ratio ours/baseline is the number to compare with the issue's targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from publisher import PublishStats

PROBLEM_KEYS = ("lost", "duplicated", "duplicated_offsets", "offset_gaps", "reordered")


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return round(sorted_values[index], 2)


def merge_reports(reports: list[dict[str, Any]], stats: PublishStats) -> dict[str, Any]:
    """One phase's result: latency percentiles, throughput, loss, closes, publishes."""
    latencies = sorted(x for r in reports for x in r["latencies_ms"])
    received = sum(r["received"] for r in reports)
    last = max((r["last_ns"] for r in reports if r["last_ns"]), default=0)
    span = (last / 1e9 - stats.started) if last else 0.0
    closed: dict[str, int] = {}
    for r in reports:
        for reason, count in r["closed"].items():
            closed[reason] = closed.get(reason, 0) + count
    req = sorted(stats.request_ms)
    result: dict[str, Any] = {
        "subscribers": sum(r["subscribers"] for r in reports),
        "published": len(stats.acked),
        "publish_failed": stats.failed,
        "publish_error": stats.first_error,
        "publish_errors": stats.errors,
        "publish_seconds": round(stats.ended - stats.started, 2),
        "publish_request_p50_ms": percentile(req, 0.5),
        "publish_request_p99_ms": percentile(req, 0.99),
        "delivered": received,
        "delivered_per_s": round(received / span, 1) if span > 0 else None,
        "latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p90": percentile(latencies, 0.9),
            "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else None,
        },
        "closed": closed,
        "unexpected": sum(r["unexpected"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
    }
    for key in PROBLEM_KEYS:
        result[key] = sum(r[key] for r in reports)
    return result


def problems(results: dict[str, Any]) -> list[str]:
    """Correctness failures of one server's run: loss, duplicates, gaps, closes."""
    found = [f"run failed: {results['error']}"] if "error" in results else []
    for name in ("rate_small", "saturation", "rate_large"):
        phase = results.get(name)
        if not phase:
            continue
        for key in (*PROBLEM_KEYS, "errors"):
            if phase[key]:
                found.append(f"{name}: {phase[key]} {key}")
        if phase["closed"]:
            found.append(f"{name}: subscribers closed by the server: {phase['closed']}")
        if phase["publish_failed"]:
            found.append(f"{name}: {phase['publish_failed']} failed publishes "
                         f"{phase['publish_errors']}")  # fmt: skip
    return found


def _get(results: dict[str, Any], path: str) -> Any:
    value: Any = results
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# What a handshake and the server-timed hand-off (edumatrix_delivery_latency_seconds)
# measure on each transport: over SSE the stream runs Strawberry's own subscription
# path, where the histogram is observed when the resolver yields, before the
# per-subscriber execution, encoding and write.
TRANSPORT_NAMES = {
    "ws": {"handshake": "connect+init+ack", "handoff": "written to sockets"},
    "sse": {"handshake": "connect+POST+200 headers", "handoff": "yielded by the resolver"},
    "pusher": {"handshake": "connect+auth+subscribed", "handoff": "written to sockets"},
}

Row = tuple[str, str, str]  # label, path into results, which way is better
ROWS: list[Row] = [
    ("{subs} subs × {rate}: latency p50 ms", "rate_small.latency_ms.p50", "lower"),
    ("{subs} subs × {rate}: latency p90 ms", "rate_small.latency_ms.p90", "lower"),
    ("{subs} subs × {rate}: latency p99 ms", "rate_small.latency_ms.p99", "lower"),
    ("{subs} subs × {rate}: latency max ms", "rate_small.latency_ms.max", "lower"),
    (
        "{subs} subs × {rate}: publish request p99 ms, client-timed",
        "rate_small.publish_request_p99_ms",
        "lower",
    ),
    (
        "{subs} subs × {rate}: publish request p99 ms, server-timed (≤)",
        "rate_small.server_timed.http_p99_ms",
        "lower",
    ),
    (
        "{subs} subs × {rate}: publish → {handoff} p99 ms, server-timed (≤)",
        "rate_small.server_timed.handoff_p99_ms",
        "lower",
    ),
    ("{subs} subs × {rate}: delivered msg/s", "rate_small.delivered_per_s", "higher"),
    ("{subs} subs × {rate}: server CPU %", "rate_small.cpu_percent", "lower"),
    ("{subs} subs × {rate}: lost / duplicated", "rate_small.lost|rate_small.duplicated", "lower"),
    ("saturation {subs} subs: deliveries/s", "saturation.delivered_per_s", "higher"),
    ("saturation {subs} subs: publishes/s", "saturation.offered_per_s", "higher"),
    ("saturation {subs} subs: latency p50 ms", "saturation.latency_ms.p50", "lower"),
    ("saturation {subs} subs: latency p99 ms", "saturation.latency_ms.p99", "lower"),
    ("saturation {subs} subs: server CPU %", "saturation.cpu_percent", "lower"),
    ("saturation {subs} subs: lost / duplicated", "saturation.lost|saturation.duplicated", "lower"),
    ("{large} subs × {rate}: latency p50 ms", "rate_large.latency_ms.p50", "lower"),
    ("{large} subs × {rate}: latency p99 ms", "rate_large.latency_ms.p99", "lower"),
    ("{large} subs × {rate}: latency max ms", "rate_large.latency_ms.max", "lower"),
    (
        "{large} subs × {rate}: publish → {handoff} p99 ms, server-timed (≤)",
        "rate_large.server_timed.handoff_p99_ms",
        "lower",
    ),
    ("{large} subs × {rate}: delivered msg/s", "rate_large.delivered_per_s", "higher"),
    ("{large} subs × {rate}: drain after last publish s", "rate_large.drain_s", "lower"),
    ("{large} subs × {rate}: server CPU %", "rate_large.cpu_percent", "lower"),
    ("{large} subs × {rate}: client CPU %", "rate_large.client_cpu_percent", "lower"),
    ("{large} subs × {rate}: lost / duplicated", "rate_large.lost|rate_large.duplicated", "lower"),
    ("idle RSS per 1,000 subs MB ({subs} connected)", "idle_rss_mb_per_1000", "lower"),
    ("handshakes/s ({handshake}, 50 in flight)", "connect.handshakes_per_s", "higher"),
    ("handshakes: server CPU %", "connect.server_cpu_percent", "lower"),
    ("handshakes: client CPU %", "connect.client_cpu_percent", "lower"),
    ("publishes/s, no subscribers", "publish_only.offered_per_s", "higher"),
    ("publishes/s, no subscribers: server CPU %", "publish_only.cpu_percent", "lower"),
]


def _cell(results: dict[str, Any] | None, path: str) -> tuple[str, float | None]:
    if results is None:
        return "–", None
    if "|" in path:
        values = [_get(results, p) for p in path.split("|")]
        return " / ".join(_fmt(v) for v in values), None
    value = _get(results, path)
    return _fmt(value), float(value) if isinstance(value, int | float) else None


def markdown(
    runs: dict[str, dict[str, Any]],
    names: dict[str, str],
    label: Callable[[str], str] = str,
    metric: str = "metric",
) -> str:
    """The side-by-side table; the ratio is ours/baseline whichever way is better.

    ``names`` fills the row titles ({subs}, {large}, {rate}) from the plan, so a
    --quick table cannot be mistaken for the full one, and says what a handshake and
    the server-timed hand-off are for the transport ({handshake}, {handoff}; the
    WebSocket ones unless given). ``metric`` heads the first column (the driver
    names the subscriber client and transport there).
    """
    names = {**TRANSPORT_NAMES["ws"], **names}
    ours, base = runs.get("ours"), runs.get("baseline")
    lines = [
        f"| {metric} | {label('ours')} | {label('baseline')} | ours/baseline | better |",
        "|---|---:|---:|---:|---|",
    ]
    for title, path, better in ROWS:
        if all(_get(r, path.split("|")[0]) is None for r in runs.values()):
            continue
        text_o, val_o = _cell(ours, path)
        text_b, val_b = _cell(base, path)
        ratio = f"{val_o / val_b:.2f}×" if val_o is not None and val_b else "–"
        lines.append(f"| {title.format(**names)} | {text_o} | {text_b} | {ratio} | {better} |")
    return "\n".join(lines)
