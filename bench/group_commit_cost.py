"""CPU per batch of the announcement group commit on SQLite, by batch size.

Why: a batch has a fixed cost (connection checkout, round trips to aiosqlite's
thread, the commit) and a cost per row; which of the two dominates decides what
is worth cutting, and under a publish flood through uvicorn batches are only
about 4 rows (8 publishers, half of them waiting for the previous commit). This
writes batches of each size with ``AnnouncementWriter._write`` (the writer
task's own call) into a fresh migrated and seeded SQLite database under uvloop,
as the server runs, and prints the minimum over rounds of CPU per batch (the
aiosqlite thread included: process time).

    taskset -c 0 .venv/bin/python bench/group_commit_cost.py [--sizes 1 4 8 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import uvloop

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from publisher import BODY  # noqa: E402

from db.engine import create_engine, make_sessionmaker  # noqa: E402
from db.group_commit import AnnouncementWriter, NewAnnouncement  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.repo import Actor  # noqa: E402
from db.seed import seed_demo  # noqa: E402

ACTOR = Actor("nw-ada", "teacher", "northwood")  # a seeded teacher of the seeded institution
CHANNEL = "institution:northwood"


async def measure(url: str, sizes: list[int], batches: int, rounds: int) -> None:
    engine = create_engine(url)
    try:
        await seed_demo(make_sessionmaker(engine))
        writer = AnnouncementWriter(engine)
        for size in sizes:
            rows = [
                NewAnnouncement(ACTOR, CHANNEL, "northwood", f"cost {i}", BODY, "NORMAL")
                for i in range(size)
            ]
            for _ in range(batches // 5):  # warm: statement text, bind processors, pages
                await writer._write(rows)
            per_batch = []
            for _ in range(rounds):
                started = time.process_time()
                for _ in range(batches):
                    await writer._write(rows)
                per_batch.append((time.process_time() - started) / batches * 1e6)
            best = min(per_batch)
            print(f"batch of {size:>3}: {best:6.0f} µs CPU per batch, {best / size:5.0f} per row")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batches", type=int, default=1000, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="group-commit-") as workdir:
        url = f"sqlite+aiosqlite:///{workdir}/cost.db"
        upgrade(url)
        uvloop.run(measure(url, args.sizes, args.batches, args.rounds))


if __name__ == "__main__":
    main()
