"""kill -9 at seeded random moments inside a round: after a restart the round completes and
the ledger and files agree (`activeseg check`), with no annotation lost or duplicated.

Five rounds, each killed ten times in a row (50 kill points), run in copies of a project that
finished round 0 with the simulated annotator, so round 1 goes through every stage: ingest,
train, evaluate, score, select, push.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.project import open_project
from activeseg.workflows.simulate import create_demo_project

pytestmark = pytest.mark.slow

KILL_POINTS = 50
KILLS_PER_ROUND = 10
# Python and torch start in ~3 s: kills up to this late land in every stage over the restarts.
KILL_WINDOW_SECONDS = 9.0
ROOT = Path(__file__).resolve().parents[2]


def _activeseg(*args: str, project: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "activeseg", *args, "-p", str(project)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _finish(*args: str, project: Path) -> str:
    done = _activeseg(*args, project=project)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def after_round_zero(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a project that finished round 0 (its crops queued for the simulated annotator)."""
    root = create_demo_project(tmp_path_factory.mktemp("kill") / "template", "smoke").root
    _finish("round", project=root)
    return root


def _annotations_per_task(project_root: Path) -> dict[int, int]:
    project = open_project(project_root)
    with project.session() as session:
        tasks = pool_tasks.list_tasks(session)
        return {
            t.id: sum(a.current for a in pool_tasks.annotation_history(session, t.id))
            for t in tasks
        }


def _kill_somewhere(project: Path, rng: random.Random, window: float) -> None:
    """Start `activeseg round` and kill -9 it at a random moment."""
    running = _activeseg("round", project=project)
    time.sleep(rng.uniform(0.5, window))
    running.send_signal(signal.SIGKILL)
    running.communicate()


def _assert_consistent(project: Path) -> None:
    check = _activeseg("check", "--json", project=project)
    report, _ = check.communicate(timeout=120)
    assert check.returncode == 0, report
    per_task = _annotations_per_task(project)  # answered once each: none lost, none twice
    assert per_task and all(n <= 1 for n in per_task.values()), per_task
    with open_project(project).session() as session:
        labeled = pool_volumes.list_crops(session, status="labeled")
    assert len(labeled) == sum(per_task.values())


@pytest.mark.parametrize("seed", range(KILL_POINTS // KILLS_PER_ROUND))
def test_rounds_killed_anywhere_complete_after_a_restart(
    after_round_zero: Path, tmp_path: Path, seed: int
) -> None:
    """KILLS_PER_ROUND kills at seeded moments; each restart resumes where the last one was
    killed, so the kills land in every stage; then the round completes and all agrees."""
    project = tmp_path / "p"
    shutil.copytree(after_round_zero, project)
    rng = random.Random(seed)
    for _ in range(KILLS_PER_ROUND):
        _kill_somewhere(project, rng, KILL_WINDOW_SECONDS)
    out = _finish("round", "--json", project=project)
    stages = json.loads(out[out.index("{") :])["stages"]
    assert [s["status"] for s in stages] == ["done"] * 6, stages
    _assert_consistent(project)
