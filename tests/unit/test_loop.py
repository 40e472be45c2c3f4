"""The loop with the simulated annotator: stages recorded, resumable after SIGKILL, locked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.errors import InputError, LockError, ProjectNotFoundError, StateError
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows import simulate
from activeseg.workflows.ingest import ingest_file
from activeseg.workflows.loop import STAGES, abandon_round, run_round
from activeseg.workflows.project import Project, open_project
from activeseg.workflows.simulate import create_demo_project


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a smoke project with synthetic volumes and round 0 (model-free) finished."""
    root = tmp_path_factory.mktemp("loop") / "project"
    project = create_demo_project(root, "smoke")
    run_round(project)
    project.engine.dispose()
    return root


def _copy(started: Path, tmp_path: Path) -> Project:
    target = tmp_path / "project"
    shutil.copytree(started, target)
    return open_project(target)


def _state(project: Project) -> dict[str, object]:
    """Return what a round leaves behind: tasks, labels, checkpoints, scores, crop states."""
    with project.session() as session:
        tasks = pool_tasks.list_tasks(session)
        rounds = pool_rounds.list_rounds(session)
        return {
            "tasks": [(t.crop_id, t.round_id, t.slices) for t in tasks],
            "annotations": [
                (a.task_id, a.label_path, a.current)
                for t in tasks
                for a in pool_tasks.annotation_history(session, t.id)
            ],
            "crops": [(c.id, c.status, c.labeled_round) for c in pool_volumes.list_crops(session)],
            "checkpoints": [
                pool_rounds.latest_checkpoint(session, r.id) is not None for r in rounds
            ],
            "selected": [
                [s.crop_id for s in pool_rounds.round_scores(session, r.id) if s.selected]
                for r in rounds
            ],
            "stages": [[(s.name, s.status) for s in r.stages] for r in rounds],
            "finished": [r.finished_at is not None for r in rounds],
        }


def test_round_zero_is_model_free_and_queues_a_batch(started: Path) -> None:
    project = open_project(started)
    with project.session() as session:
        first = pool_rounds.get_round(session, 0)
        queued = pool_volumes.list_crops(session, status="queued")
        pool = pool_volumes.list_crops(session, split="pool")
        chosen = [s.crop_id for s in pool_rounds.round_scores(session, first.id) if s.selected]
    assert first.strategy == "diverse"
    assert [s.name for s in first.stages] == list(STAGES)
    assert len(queued) == project.config.acquisition.batch_size
    outputs = {s.name: s.outputs for s in first.stages}
    assert outputs["ingest"] == {
        "ingested": 0,
        "correction_voxels": None,
        "correction_fraction": None,
    }
    assert outputs["train"] == {"skipped": "no labeled crops yet"}
    assert outputs["evaluate"] == {"skipped": "no model yet"}
    assert outputs["score"] == {"scored": len(pool), "model": None}
    assert outputs["select"] == {"selected": chosen, "strategy": "diverse"}
    assert set(chosen) == {c.id for c in queued}
    assert outputs["push"] == {"pushed": len(queued)}


@pytest.mark.slow
def test_a_round_ingests_trains_evaluates_and_pushes(started: Path, tmp_path: Path) -> None:
    project = _copy(started, tmp_path)
    info = run_round(project)
    assert info.finished_at is not None
    train = info.stage("train")
    assert train is not None and train.outputs["labeled_crops"] == 2
    assert {"AP50", "avF1", "C", "S", "voxel_error_auroc"} <= set(info.metrics)
    with project.session() as session:
        labeled = pool_volumes.list_crops(session, status="labeled")
        queued = pool_volumes.list_crops(session, status="queued")
        tasks = pool_tasks.list_tasks(session)
    assert {c.labeled_round for c in labeled} == {1}
    assert len(queued) == 2
    assert all(len(t.slices) == project.config.labelstudio.slices for t in tasks)
    reasons = {t.pushed["reason"] for t in tasks if t.round_id == info.id}
    assert reasons == {"slices where the model is most unsure"}


def test_until_stops_and_the_next_call_resumes(started: Path, tmp_path: Path) -> None:
    project = _copy(started, tmp_path)
    project = replace(project, config=project.config)
    paused = run_round(project, until="ingest")
    assert paused.finished_at is None
    assert [s.name for s in paused.stages] == ["ingest"]
    events: list[tuple[str, str]] = []
    run_round(project, until="ingest", events=lambda stage, state, _: events.append((stage, state)))
    assert events == [("ingest", "skipped")]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from activeseg.workflows.locks import hold_lock

    with hold_lock(Path(sys.argv[1]), "round"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_second_round_process_is_refused_until_the_holder_dies(
    started: Path, tmp_path: Path
) -> None:
    project = _copy(started, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(project.root)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(LockError, match=f"pid {holder.pid}") as refused:
            run_round(project)
        assert refused.value.exit_code == 75  # EX_TEMPFAIL: a script may retry
        held = CliRunner().invoke(app, ["unlock", "-p", str(project.root)])
        assert held.exit_code == 75 and f"round: held by pid {holder.pid}" in held.output
    finally:
        holder.kill()  # kill -9: no clean-up runs, the kernel releases the flock
        holder.wait()
    free = CliRunner().invoke(app, ["unlock", "--json", "-p", str(project.root)])
    assert free.exit_code == 0 and '"held": true' not in free.output
    run_round(project, until="ingest")


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from activeseg.workflows import loop
    from activeseg.workflows.project import open_project

    stage, when = sys.argv[2], sys.argv[3]
    original = loop.STAGE_FUNCTIONS[stage]

    def crash(context):
        if when == "after":
            original(context)  # the work is done but not yet recorded
        os.kill(os.getpid(), signal.SIGKILL)

    loop.STAGE_FUNCTIONS[stage] = crash
    loop.run_round(open_project(Path(sys.argv[1])))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "when"),
    [
        ("ingest", "after"),
        ("train", "before"),
        ("train", "after"),
        ("evaluate", "after"),
        ("score", "after"),
        ("select", "after"),
        ("push", "after"),
    ],
)
def test_a_round_killed_in_any_stage_resumes_to_the_same_state(
    started: Path, tmp_path: Path, stage: str, when: str, request: pytest.FixtureRequest
) -> None:
    reference_dir = tmp_path / "reference"
    reference = _copy(started, reference_dir)
    run_round(reference)
    killed = _copy(started, tmp_path / "killed")
    killed.engine.dispose()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    crashed = subprocess.run(
        [sys.executable, "-c", KILLER, str(killed.root), stage, when], env=env, check=False
    )
    assert crashed.returncode == -signal.SIGKILL
    run_round(killed)
    assert _state(killed) == _state(reference)


def test_the_file_annotator_queues_crops_and_labels_come_from_files(
    started: Path, tmp_path: Path
) -> None:
    project = _copy(started, tmp_path)
    loop_config = project.config.loop.model_copy(update={"annotator": "file"})
    project = replace(project, config=project.config.model_copy(update={"loop": loop_config}))
    with project.session() as session:
        before = {t.id for t in pool_tasks.list_tasks(session)}
    info = run_round(project, strategy="random")  # no model: a model-free strategy
    outputs = {s.name: s.outputs for s in info.stages}
    assert outputs["ingest"]["ingested"] == 0  # nothing answered the round-0 tasks
    assert outputs["train"] == {"skipped": "no labeled crops yet"}
    assert outputs["push"] == {"pushed": project.config.acquisition.batch_size}
    with project.session() as session:
        tasks = pool_tasks.list_tasks(session)
        answered = [t.id for t in tasks if pool_tasks.current_annotation(session, t.id)]
    new = [t for t in tasks if t.id not in before]
    assert answered == []
    assert {t.pushed["annotator"] for t in new} == {"file"}
    assert {t.crop_id for t in new} == set(outputs["select"]["selected"])
    crop = new[0].crop_id
    with project.session() as session:
        shape = pool_volumes.get_crop(session, crop).shape
    labels = tmp_path / "labels.zarr"
    zarr.create_array(labels, data=np.ones(shape, np.uint32))
    assert ingest_file(project, crop, labels) == "ingested"
    with project.session() as session:
        assert pool_volumes.get_crop(session, crop).status == "labeled"
        assert pool_tasks.current_annotation(session, new[0].id) is not None


def test_a_mistyped_strategy_is_refused_before_anything_is_stored(
    started: Path, tmp_path: Path
) -> None:
    project = _copy(started, tmp_path)
    before = _state(project)
    answer = CliRunner().invoke(app, ["round", "--strategy", "foo", "-p", str(project.root)])
    assert answer.exit_code == 2 and "foo" in answer.output
    with pytest.raises(InputError, match="strategy must be one of"):
        run_round(project, strategy="foo")
    assert _state(project) == before


def test_a_resumed_round_refuses_other_settings_and_can_be_abandoned(
    started: Path, tmp_path: Path
) -> None:
    project = _copy(started, tmp_path)
    paused = run_round(project, until="ingest", strategy="random", batch_size=1)
    with pytest.raises(InputError, match="resumes with the strategy random"):
        run_round(project, strategy="bald")
    with pytest.raises(InputError, match="batch size 1"):
        run_round(project, batch_size=3)
    answer = CliRunner().invoke(app, ["round", "--abandon", "-p", str(project.root)])
    assert answer.exit_code == 0, answer.output
    with project.session() as session:
        closed = pool_rounds.get_round(session, paused.number)
    assert closed.abandoned and closed.finished_at is not None
    fresh = run_round(project, until="ingest", strategy="bald")
    assert (fresh.number, fresh.strategy) == (paused.number + 1, "bald")
    history = CliRunner().invoke(app, ["history", "--json", "-p", str(project.root)])
    rows = {row["round"]: row for row in json.loads(history.output)}
    assert rows[paused.number]["abandoned"] and not rows[fresh.number]["abandoned"]
    with pytest.raises(StateError, match="no round is open"):
        run_round(project)  # finishes the open round
        abandon_round(project)


def test_an_interrupted_simulation_copy_never_opens_the_original(
    started: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _copy(started, tmp_path)
    target = project.root / "simulations" / "random-seed0"
    config = project.config
    real_copytree = shutil.copytree

    def interrupted(src: Path, dst: Path, **kwargs: object) -> None:
        Path(dst).mkdir(parents=True)
        (Path(dst) / "pool.db").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate.shutil, "copytree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulate.copy_project(project, target, config)
    assert not target.exists()  # only a partial copy, under a temporary name
    monkeypatch.setattr(simulate.shutil, "copytree", real_copytree)
    copy = simulate.copy_project(project, target, config)
    assert copy.root == target.resolve()
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".partial")]
    target.rename(tmp_path / "elsewhere")
    target.mkdir()  # a folder that is no project: refused, not climbed out of
    with pytest.raises(ProjectNotFoundError):
        simulate.copy_project(project, target, config)


def test_a_round_without_new_labels_keeps_the_model_and_its_cached_scores(
    started: Path, tmp_path: Path
) -> None:
    project = _copy(started, tmp_path)
    trained = run_round(project)  # answers round 0's tasks, trains
    files = replace(project, config=project.config.model_copy(update={
        "loop": project.config.loop.model_copy(update={"annotator": "file"})}))  # fmt: skip
    idle = run_round(files)  # nobody answered: no label changed
    train = idle.stage("train")
    assert train is not None and train.outputs["skipped"].startswith("no labels changed")
    score = idle.stage("score")
    assert (
        score is not None
        and score.outputs["model"]
        == trained.stage("train").outputs[  # type: ignore[union-attr]
            "checkpoint"
        ]
    )
