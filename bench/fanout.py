"""Fan-out benchmark: our server and a plain Strawberry + broadcaster baseline, side by side.

Issue 4 asks for numbers anyone can rerun and compare: a real graphql-transport-ws
client (Node ``graphql-ws`` by default, bench/node/shard.mjs; ``--client python`` for
the ``websockets`` shard), publishes through the public mutation with real tokens,
both servers driven in one run by the same client so the ratios mean something on
a shared machine. See bench/README.md for what each number means.

    python bench/fanout.py --quick            # smoke: small N, well under a minute
    python bench/fanout.py                    # the issue's scenarios, a few minutes
    python bench/fanout.py --server ours --workers 2 --redis-url redis://127.0.0.1:6379/0
    python bench/fanout.py --server ours --redis-url redis://127.0.0.1:6379/0 \
        --database-url postgresql://postgres@127.0.0.1:5432/postgres   # cluster mode
    python bench/fanout.py --quick --server ours --fast-paths off   # stock library paths
    python bench/fanout.py --quick --server ours --tree /tmp/before  # another worktree
    python bench/fanout.py --quick --transport sse   # subscribers over graphql-sse (ours only)
    python bench/fanout.py --quick --transport pusher  # over the Pusher protocol (ours only)

Exit status 1 when any subscriber lost, duplicated or reordered a message, or was
closed by the server during a measured phase: a correctness check, not a timing one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import resource
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from report import TRANSPORT_NAMES, markdown, problems
from scenarios import Plan, ServerRun
from servers import BENCH, STOCK_ENV, Server, fast_paths_on, node_client, postgres_admin_url, redact

DATABASES = {"sqlite": "SQLite", "postgres": "Postgres"}
BUSES = {"memory": "memory bus", "redis": "Redis"}
TRANSPORTS = {
    "ws": "graphql-transport-ws",
    "sse": "SSE, distinct connections",
    "pusher": "the Pusher protocol",
}
# The baseline is Strawberry's GraphQL view with its default subscription_protocols
# (the two WebSocket ones): it does not answer `Accept: text/event-stream`.
BASELINE_TRANSPORTS = ("ws",)


def build_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(subs=100, large_subs=200, duration=2.0, sat_duration=1.5,
                    pub_duration=1.0, shard_size=100, drain_s=10.0)  # fmt: skip
    else:
        plan = Plan()
    for name in ("subs", "large_subs", "rate", "duration", "sat_window"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    plan.client_cpu = (os.cpu_count() or 2) - 1
    plan.client = args.client
    plan.transport = args.transport
    plan.database = "postgres" if args.database_url else "sqlite"
    plan.bus = "redis" if args.redis_url else "memory"
    plan.fast_paths = args.fast_paths
    plan.tree = str(args.tree.resolve()) if args.tree else ""
    return plan


def redact_arg(arg: str) -> str:
    """A command-line argument with any URL password hidden (`--x=URL` or `URL`)."""
    if arg.startswith("--") and "=" in arg:
        name, value = arg.split("=", 1)
        return f"{name}={redact(value)}"
    return redact(arg) if "://" in arg else arg


def server_label(kind: str, plan: Plan, workers: int) -> str:
    """A table column header: ours names its database and bus (embedded or cluster mode)."""
    if kind == "ours":
        label = f"ours: {DATABASES[plan.database]} + {BUSES[plan.bus]}"
        label += f", {workers} workers" if workers > 1 else ""
        label += ", fast paths off" if plan.fast_paths == "off" else ""
        label += {"sse": ", over SSE", "pusher": ", over Pusher"}.get(plan.transport, "")
        return label + (f", tree {plan.tree}" if plan.tree else "")
    return kind + (f" ({workers} workers + Redis)" if workers > 1 else "")


def choose_client(requested: str | None, transport: str = "ws") -> tuple[str, dict[str, str]]:
    """The subscriber shard to use and its versions: Node's graphql-ws when it can run.

    The issue measures with a Node graphql-ws client; the Python shard is the
    fallback, and at 5,000 subscribers it needs a whole core (so latency there
    measures the client): say so whenever it is used by default. Over SSE the Node
    shard runs graphql-sse's client, the Python shard httpx.
    """
    versions, why_not = node_client(transport)
    if requested == "node" and versions is None:
        raise SystemExit(f"[bench] --client node: {why_not}")
    if transport == "pusher" and (requested == "python" or versions is None):
        raise SystemExit(f"[bench] --transport pusher needs the Node shard: {why_not or 'asked'}")
    if requested == "python" or versions is None:
        if requested is None:
            print(f"[bench] using the Python subscriber shard: {why_not}. It saturates the "
                  "client core near 50k deliveries/s, so large-N latency measures the client.",
                  file=sys.stderr)  # fmt: skip
        library = "httpx" if transport == "sse" else "websockets"
        return "python", {"python": platform.python_version(), library: version(library)}
    return "node", versions


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        # The machine is shared: other load during the run moves the numbers.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def run_one(kind: str, args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    database_url = args.database_url if kind == "ours" else None  # the baseline has none
    extra_env: dict[str, str] = {}
    if kind == "ours" and plan.fast_paths == "off":  # the baseline has no fast paths
        extra_env.update(STOCK_ENV)
    if kind == "ours" and plan.tree:  # nor another tree
        extra_env["PYTHONPATH"] = plan.tree
    server = Server(kind, workers=args.workers, redis_url=args.redis_url,
                    database_url=database_url, extra_env=extra_env)  # fmt: skip
    print(f"[bench] starting {kind} (taskset -c {server.cpus}, port {server.port}, "
          f"database {server.database}, {server.bus} bus)", file=sys.stderr)  # fmt: skip
    server.start()
    fast = fast_paths_on(server.port) if kind == "ours" else "n/a"
    run = ServerRun(server, plan)
    try:
        results = await run.run()
    except Exception as exc:  # keep what was measured; the other server still runs
        print(f"[bench] {kind} failed: {exc!r}; server log tail:\n{server.log()[-1500:]}",
              file=sys.stderr)  # fmt: skip
        results = {**run.results, "error": repr(exc)}
        await run.disconnect()
    finally:
        errors = server.log_errors()
        server.stop()
    results["server_log_errors"] = errors
    results["server"] = {
        "kind": kind,
        "workers": args.workers,
        "redis": bool(args.redis_url),
        "database": server.database,
        "postgres_version": server.postgres_version,
        "fast_paths_on": fast,  # as the server reported them (n/a before api/accel)
    }
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, a few seconds each")
    parser.add_argument(
        "--server",
        choices=["ours", "baseline", "both"],
        help="default both (ours alone with --transport sse: the baseline has no SSE)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (needs Redis)")
    parser.add_argument("--redis-url", default=None, help="shared bus for both servers")
    parser.add_argument(
        "--database-url",
        default=None,
        help="ours on PostgreSQL (cluster mode): a fresh database on this server per start, "
        "dropped after; postgresql:// or postgresql+asyncpg://",
    )
    parser.add_argument("--subs", type=int, help="subscribers of the 1k phases")
    parser.add_argument("--large-subs", type=int, help="subscribers of the 5k phase (0 = skip)")
    parser.add_argument("--rate", type=float, help="publishes/s of the rate phases")
    parser.add_argument("--duration", type=float, help="seconds of each rate phase")
    parser.add_argument(
        "--sat-window",
        type=int,
        help="saturation: max messages in flight per subscriber (0 = open loop)",
    )
    parser.add_argument(
        "--client",
        choices=["node", "python"],
        help="subscriber shards: node = graphql-ws or graphql-sse (default when installed), "
        "python = websockets or httpx",
    )
    parser.add_argument(
        "--transport",
        choices=["ws", "sse", "pusher"],
        default="ws",
        help="how the subscribers subscribe: ws = graphql-transport-ws, "
        "sse = graphql-sse distinct connections (POST with Accept: text/event-stream), "
        "pusher = the Pusher protocol on /app/{key} (Node shard only)",
    )
    parser.add_argument(
        "--fast-paths",
        choices=["on", "off"],
        default="on",
        help="ours: off runs it with EDUMATRIX_FAST_PATHS=false (the stock library paths)",
    )
    parser.add_argument("--tree", type=Path, help="ours: run it from this source tree")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default bench/results/<date>[-quick][-sse].json)"
    )
    args = parser.parse_args(argv)
    if args.server is None:
        args.server = "both" if args.transport in BASELINE_TRANSPORTS else "ours"
    elif args.server != "ours" and args.transport not in BASELINE_TRANSPORTS:
        parser.error(f"--transport {args.transport}: the baseline does not serve it (it has "
                     "Strawberry's default subscription protocols); use --server ours")  # fmt: skip
    if args.tree and not (args.tree / "api" / "app.py").is_file():
        parser.error(f"--tree: {args.tree} is not a source tree of this project (no api/app.py)")
    if args.workers > 1 and not args.redis_url:
        parser.error("--workers > 1 needs --redis-url (both servers need a shared bus)")
    if args.database_url:
        if args.server == "baseline":
            parser.error("--database-url is for our server; the baseline has no database")
        try:
            postgres_admin_url(args.database_url)
        except ValueError as exc:
            parser.error(f"--database-url: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.client, client_versions = choose_client(args.client, args.transport)
    plan = build_plan(args)
    if args.transport not in BASELINE_TRANSPORTS:
        print(f"[bench] subscribers over {TRANSPORTS[args.transport]}: our server only, "
              "the baseline does not serve it", file=sys.stderr)  # fmt: skip
    os.sched_setaffinity(0, {plan.client_cpu})  # shards pin themselves too (Node via taskset)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    kinds = ["ours", "baseline"] if args.server == "both" else [args.server]
    started = datetime.now(UTC)
    load_before = machine()["loadavg_1m"]
    runs = {kind: asyncio.run(run_one(kind, args, plan)) for kind in kinds}

    suffix = "-quick" if args.quick else ""
    suffix += "" if args.transport == "ws" else f"-{args.transport}"
    out = args.out or BENCH / "results" / f"{started:%Y-%m-%d}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    given = argv if argv is not None else sys.argv[1:]
    command = "python bench/fanout.py " + " ".join(redact_arg(a) for a in given)
    document = {
        "started": started.isoformat(timespec="seconds"),
        "command": command.strip(),
        "machine": {**machine(), "loadavg_1m_before": load_before},
        "plan": vars(plan),
        "client": {"kind": args.client, "versions": client_versions},
        "runs": runs,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")

    print(f"\n{started:%Y-%m-%d %H:%M} UTC · {command.strip()} · {machine()['cpu']}, "
          f"nproc {os.cpu_count()} · rate {plan.rate:g}/s · results in {out}\n")  # fmt: skip
    names = {"subs": f"{plan.subs:,}", "large": f"{plan.large_subs:,}", "rate": f"{plan.rate:g}/s",
             **TRANSPORT_NAMES[plan.transport]}  # fmt: skip
    over = "" if plan.transport == "ws" else f" over {TRANSPORTS[plan.transport]}"
    client = f"{args.client} client{over}: " + ", ".join(
        f"{k} {v}" for k, v in client_versions.items()
    )
    label = functools.partial(server_label, plan=plan, workers=args.workers)
    print(markdown(runs, names, label, metric=f"metric ({client})"))
    failures = {kind: problems(r) for kind, r in runs.items()}
    for kind, found in failures.items():
        for line in found:
            print(f"[bench] {kind}: {line}", file=sys.stderr)
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
