"""Prediction and pool scoring on a Dask cluster: the same bits as in one process.

The cluster tests start a real LocalCluster of two worker processes on 127.0.0.1 and run a
real (briefly trained) smoke model; the project root is a local folder that the workers see
at the same path, as a shared file system would show it to every host.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from activeseg.config import ComputeConfig
from activeseg.core import tiling
from activeseg.core.stitching import StitchOptions, plan_blocks
from activeseg.errors import InputError
from activeseg.pool import rounds as pool_rounds
from activeseg.workflows.distributed import ModelRef, dask_client, task_map, with_compute
from activeseg.workflows.loop import run_round
from activeseg.workflows.predict import CONSENSUS, predict_volume
from activeseg.workflows.project import Project, open_project
from activeseg.workflows.score import analysis_path
from activeseg.workflows.simulate import create_demo_project


def test_serial_map_is_lazy_and_in_order() -> None:
    seen: list[int] = []

    def note(x: int) -> int:
        seen.append(x)
        return -x

    with task_map(ComputeConfig()) as run:
        results = run(note, [3, 1, 2])
        assert seen == []  # nothing runs before it is asked for: a crash loses nothing done
        assert next(results) == -3 and seen == [3]
        assert list(results) == [-1, -2]


def test_compute_overrides_leave_the_rest_of_the_config(smoke_project: Project) -> None:
    changed = with_compute(smoke_project, workers=2, train_processes=3)
    assert changed.config.compute == ComputeConfig(workers=2, train_processes=3)
    assert changed.config.model == smoke_project.config.model
    assert with_compute(smoke_project) is smoke_project
    with pytest.raises(InputError, match="scheduler"):
        with_compute(smoke_project, scheduler="host:8786")  # no tcp:// scheme


def test_a_bad_scheduler_address_on_the_command_line_is_bad_input(
    smoke_project: Project,
) -> None:
    from typer.testing import CliRunner

    from activeseg.cli import app

    root = str(smoke_project.root)
    result = CliRunner().invoke(app, ["score", "--scheduler", "head:8786", "-p", root])
    assert result.exit_code == 2 and "compute option" in result.output


def test_a_model_reference_changes_with_the_weights(tmp_path: Path) -> None:
    for name, weights in (("a", b"1"), ("b", b"2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("model: {}\n")
        (tmp_path / name / "weights.pt").write_bytes(weights)
    a, b = ModelRef.of(tmp_path / "a"), ModelRef.of(tmp_path / "b")
    assert a.digest != b.digest and a == ModelRef.of(tmp_path / "a")


# ---------------------------------------------------------------- a real LocalCluster


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a smoke project whose round 1 has trained a model and stopped before scoring."""
    root = tmp_path_factory.mktemp("distributed") / "project"
    project = create_demo_project(root, "smoke")
    run_round(project)
    run_round(project, until="evaluate")
    project.engine.dispose()
    return root


def _copy(root: Path, target: Path) -> Project:
    project = open_project(Path(shutil.copytree(root, target)))
    # a model of 5 steps is unsure everywhere: a lower threshold gives it instances to compare
    cluster = project.config.cluster.model_copy(update={"foreground_threshold": 0.5})
    return replace(project, config=project.config.model_copy(update={"cluster": cluster}))


def _round_scores(project: Project) -> dict[int, tuple[float, dict[str, Any]]]:
    with project.session() as session:
        newest = pool_rounds.open_round(session)
        assert newest is not None and newest.number == 1
        return {s.crop_id: (s.score, s.parts) for s in pool_rounds.round_scores(session, newest.id)}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Return every array under a group (nested ones by their path, e.g. labels/consensus/0)."""
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(array[...]) for name, array in group.members(max_depth=None)
            if isinstance(array, zarr.Array)}  # fmt: skip


@pytest.mark.slow
def test_the_job_of_a_worker_that_died_is_run_again(tmp_path: Path) -> None:
    marker = tmp_path / "died"

    def die_once(value: int) -> int:  # local: sent to the workers by value
        if value == 1 and not marker.exists():
            marker.write_text("killed")
            os._exit(1)  # the worker process dies, as on a lost host
        return value * 10

    with task_map(ComputeConfig(workers=2)) as run:
        assert list(run(die_once, [0, 1, 2])) == [0, 10, 20]
    assert marker.exists()


@pytest.mark.slow
def test_two_workers_score_the_pool_as_one_process_does(trained: Path, tmp_path: Path) -> None:
    serial = _copy(trained, tmp_path / "serial")
    cluster = with_compute(_copy(trained, tmp_path / "cluster"), workers=2)
    run_round(serial, until="score")
    run_round(cluster, until="score")
    expected, got = _round_scores(serial), _round_scores(cluster)
    assert len(expected) >= 4 and got == expected  # scores and every part, to the bit
    instances = 0
    for crop_id in expected:
        want = _arrays(analysis_path(serial, 1, crop_id))
        have = _arrays(analysis_path(cluster, 1, crop_id))
        assert want.keys() == have.keys()
        for name in want:
            assert want[name].tobytes() == have[name].tobytes(), (crop_id, name)
        instances += int(want["consensus"].max())
    assert instances > 0  # the comparison covers real instances, not empty crops


@pytest.mark.slow
def test_two_workers_predict_a_volume_as_one_process_does(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small tiles, so the volume is cut into several jobs (the tiling is planned here)
    monkeypatch.setattr(tiling, "DEFAULT_CORE", (8, 32, 32))
    serial = _copy(trained, tmp_path / "serial")
    cluster = with_compute(_copy(trained, tmp_path / "cluster"), workers=2)
    # and small blocks, so the workers cluster several blocks that are then stitched
    blocks = StitchOptions(block=(8, 32, 32), margin=(2, 8, 8))
    one = predict_volume(serial, "pool0", tmp_path / "one.zarr", stitch=blocks)
    two = predict_volume(cluster, "pool0", tmp_path / "two.zarr", stitch=blocks)
    assert one["instances"] == two["instances"] > 0
    shape = zarr.open_array(str(tmp_path / "one.zarr"), path=CONSENSUS).shape
    assert len(plan_blocks(shape, blocks.block, blocks.margin)) > 4
    want, have = _arrays(tmp_path / "one.zarr"), _arrays(tmp_path / "two.zarr")
    assert zarr.open_array(str(tmp_path / "one.zarr"), path="foreground").nchunks > 4
    assert want.keys() == have.keys() and CONSENSUS in want
    for name in want:
        assert want[name].tobytes() == have[name].tobytes(), name


@pytest.mark.slow
def test_local_workers_keep_the_allocator_and_run_no_profiler() -> None:
    def settings() -> tuple[str | None, bool, str]:
        import dask

        enabled = bool(dask.config.get("distributed.worker.profile.enabled"))
        monitor = str(dask.config.get("distributed.worker.memory.monitor-interval"))
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), enabled, monitor

    with dask_client(ComputeConfig(workers=1)) as client:
        # Dask's own default trims at 64 KiB, which makes every freed tensor unmapped
        assert list(client.run(settings).values()) == [(None, False, "1s")]


def test_a_task_runs_a_few_jobs_and_every_worker_still_gets_several_tasks() -> None:
    from activeseg.workflows.distributed import MAX_JOBS_PER_TASK, jobs_per_task

    assert jobs_per_task(3, 2) == 1  # a small map: one job a task, so both workers work
    assert jobs_per_task(40, 2) == 5  # 8 tasks: 4 a worker
    assert jobs_per_task(10_000, 2) == MAX_JOBS_PER_TASK
    assert jobs_per_task(0, 0) == 1


@pytest.mark.slow
def test_jobs_batched_into_tasks_come_back_in_job_order() -> None:
    def square(value: int) -> int:  # local: sent to the workers by value
        return value * value

    jobs = list(range(57))  # 5 jobs a task, the last task short
    with task_map(ComputeConfig(workers=2)) as run:
        assert list(run(square, jobs)) == [j * j for j in jobs]
