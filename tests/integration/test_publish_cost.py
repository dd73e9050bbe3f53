"""bench/publish_cost.py runs the real app end to end with the dev dependencies alone.

It is the tool for comparing the cost of a publish between two versions of the
code; if it rots (an import that needs the bench extra, an app change it does not
follow), the next person chasing the publish target finds out here, not mid-study.
No timing is asserted: only that every publish was answered with its id (the tool
exits non-zero otherwise), that the rounds were measured, and that concurrent
publishes shared group commits as they do in the server.
"""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "bench" / "publish_cost.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--count", "48", "--rounds", "2", "--warmup", "8", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )


def test_publish_cost_measures_real_publishes(tmp_path: Path) -> None:
    profile = tmp_path / "publish.prof"
    done = run("--json", "--profile", str(profile))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [r["profiled"] for r in result["rounds"]] == [True, False]
    assert result["cpu_us_per_publish_min"] > 0
    # 8 publishers at a time: the group commit must have batched them.
    assert all(r["rows_per_batch"] > 1 for r in result["rounds"])
    names = {func[2] for func in pstats.Stats(str(profile)).stats}  # type: ignore[attr-defined]
    assert "publish_announcement" in names  # the profile is of the resolver's work


def test_publish_cost_refuses_nonsense_arguments() -> None:
    done = run("--count", "0")
    assert done.returncode == 2
    assert "--count" in done.stderr


def test_execute_cost_runs_the_publish_documents_shape() -> None:
    """bench/execute_cost.py measures the real mutation's shape: its mutation field
    must print as the schema's does, and the tool must run and report both numbers."""
    from graphql import print_type

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import execute_cost
    finally:
        sys.path.remove(str(REPO / "bench"))
    from api.settings import Settings
    from schema.build import build_schema

    real = build_schema(Settings(jwt_secret="s" * 40))._schema
    mirror = execute_cost.SCHEMA._schema
    for name in ("PublishAnnouncementInput", "Priority"):
        assert print_type(mirror.type_map[name]) == print_type(real.type_map[name])
    fields = [s.mutation_type.fields["publishAnnouncement"] for s in (mirror, real)]  # type: ignore[union-attr]
    assert [(str(f.type), {n: str(a.type) for n, a in f.args.items()}) for f in fields] == [
        ("Announcement", {"input": "PublishAnnouncementInput!"})
    ] * 2

    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "execute_cost.py"), "--count", "50", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "executor overhead:" in done.stdout
    assert "through api/direct.py's plan:" in done.stdout


def test_group_commit_cost_writes_every_batch_size() -> None:
    """bench/group_commit_cost.py writes real batches; one line per size asked for."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "group_commit_cost.py"), "--sizes", "1", "3",
         "--batches", "20", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["batch of   1", "batch of   3"]
    assert all("µs CPU per batch" in line for line in lines)


def test_publish_rate_alternates_two_trees(tmp_path: Path) -> None:
    """bench/publish_rate.py runs a real server from each tree in turn.

    The same tree twice stands in for two worktrees; a directory that is not a
    source tree is refused before any server starts; ``--churn`` really connects
    and subscribes (an unacknowledged subscriber would stop the run).
    """
    tool = str(REPO / "bench" / "publish_rate.py")
    done = subprocess.run(
        [sys.executable, tool, "--tree", str(tmp_path), "--pairs", "1"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert done.returncode != 0 and "not a source tree" in done.stderr
    done = subprocess.run(
        [sys.executable, tool, "--tree", str(REPO), "--tree", ".", "--pairs", "1",
         "--seconds", "1", "--churn", "5"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = [line for line in done.stdout.splitlines() if line.startswith("round 1 ")]
    assert len(rounds) == 2 and all("publishes/s" in line for line in rounds)
    assert done.stdout.count("5 subscribers came and went") == 2  # before each round
