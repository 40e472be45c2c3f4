"""kill -9 at seeded random moments inside a round: after a restart the round completes and
the ledger and files agree (`activeseg check`), with no annotation lost or duplicated.

Each kill point runs in its own copy of a project that finished round 0 with the simulated
annotator, so round 1 goes through every stage: ingest, train, evaluate, score, select, push.
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
def after_round_zero(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Return a project that finished round 0, and how long round 1 takes uninterrupted."""
    root = create_demo_project(tmp_path_factory.mktemp("kill") / "template", "smoke").root
    _finish("round", project=root)
    timing = tmp_path_factory.mktemp("timing") / "p"
    shutil.copytree(root, timing)
    started = time.monotonic()
    _finish("round", project=timing)
    return root, time.monotonic() - started


def _annotations_per_task(project_root: Path) -> dict[int, int]:
    project = open_project(project_root)
    with project.session() as session:
        tasks = pool_tasks.list_tasks(session)
        return {
            t.id: sum(a.current for a in pool_tasks.annotation_history(session, t.id))
            for t in tasks
        }


@pytest.mark.parametrize("seed", range(KILL_POINTS))
def test_a_round_killed_anywhere_completes_after_a_restart(
    after_round_zero: tuple[Path, float], tmp_path: Path, seed: int
) -> None:
    template, seconds = after_round_zero
    project = tmp_path / "p"
    shutil.copytree(template, project)
    running = _activeseg("round", project=project)
    time.sleep(random.Random(seed).uniform(0.5, seconds))
    running.send_signal(signal.SIGKILL)
    running.communicate()

    out = _finish("round", "--json", project=project)
    stages = json.loads(out[out.index("{") :])["stages"]
    assert [s["status"] for s in stages] == ["done"] * 6, stages
    check = _activeseg("check", "--json", project=project)
    report, _ = check.communicate(timeout=120)
    assert check.returncode == 0, report
    # round 0's pushed crops were answered once each: one current annotation per task
    per_task = _annotations_per_task(project)
    assert per_task and all(n <= 1 for n in per_task.values()), per_task
    with open_project(project).session() as session:
        labeled = pool_volumes.list_crops(session, status="labeled")
    assert len(labeled) == sum(per_task.values())
