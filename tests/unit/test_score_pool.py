"""Scoring the pool: candidate budget, score cache per (crop, model), resumable score stage.

The model is faked at ``predict_array`` (a deterministic function of the raw crop that counts
its calls), so everything after it (clustering, uncertainty, zarr maps, ledger) is real.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from activeseg.config import Config
from activeseg.core.models.checkpoint import CONFIG_FILE, NORMALIZATION_FILE, WEIGHTS_FILE
from activeseg.core.tiling import Prediction
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows import score
from activeseg.workflows.project import Project, open_project
from activeseg.workflows.simulate import create_demo_project


class CrashAfter(RuntimeError):
    """Raised by the fake model after its allowed number of calls."""


# What the score stage needs of a loaded checkpoint when FakeModel stands in for the network.
FAKE_TRAINED = SimpleNamespace(config=Config(), model=SimpleNamespace(divisor=lambda: (1, 1, 1)))


class FakeModel:
    """A deterministic stand-in for ``predict_array`` that counts calls (and can crash)."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.calls = 0
        self.crash_after = crash_after

    def __call__(self, trained: Any, raw: npt.ArrayLike, **tiling: Any) -> Prediction:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise CrashAfter(f"killed after {self.calls} crops")
        self.calls += 1
        image = np.asarray(raw, dtype=np.float32)[0]
        fg = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
        foreground = np.stack([np.clip(fg + d, 0, 1) for d in (-0.1, 0.1)]).astype(np.float32)
        grid = np.stack(np.meshgrid(*map(np.arange, fg.shape), indexing="ij")).astype(np.float32)
        embedding = np.concatenate([grid / 8.0, fg[None]], axis=0)
        embeddings = np.stack([embedding, embedding + 0.05]).astype(np.float32)
        return Prediction(foreground, embeddings, None)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a smoke project with two synthetic pool volumes (and a val volume)."""
    root = tmp_path_factory.mktemp("score") / "project"
    create_demo_project(root, "smoke").engine.dispose()
    return root


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    """Return the fake model, installed in place of loading and predicting."""
    model = FakeModel()
    monkeypatch.setattr(score, "predict_array", model)
    monkeypatch.setattr(score, "load_model", lambda path: FAKE_TRAINED)
    return model


def _copy(pool: Path, tmp_path: Path, **acquisition: Any) -> Project:
    target = Path(shutil.copytree(pool, tmp_path / "project"))
    project = open_project(target)
    if not acquisition:
        return project
    data = project.config.model_dump()
    data["acquisition"] = {**data["acquisition"], **acquisition}
    return Project(root=project.root, config=Config.model_validate(data), engine=project.engine)


def _checkpoint(project: Project, name: str, weights: bytes) -> Path:
    """Return a checkpoint folder whose files fingerprint the model (weights differ)."""
    folder = project.root / "models" / name
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(project.config.to_yaml())
    (folder / WEIGHTS_FILE).write_bytes(weights)
    (folder / NORMALIZATION_FILE).write_text("{}")
    return folder


def _round(project: Project) -> tuple[int, int]:
    with project.session() as session:
        info = pool_rounds.start_round(session, strategy="instance", batch_size=2, config="")
    return info.id, info.number


def _scores(project: Project, round_id: int) -> dict[int, tuple[float, dict[str, Any]]]:
    with project.session() as session:
        return {s.crop_id: (s.score, s.parts) for s in pool_rounds.round_scores(session, round_id)}


def _pool_crops(project: Project, status: str | None = None) -> list[Any]:
    with project.session() as session:
        return pool_volumes.list_crops(session, status=status, split="pool")


# ------------------------------------------------------------------------ candidate budget


def test_the_budget_samples_unlabeled_crops_of_every_volume(pool: Path, tmp_path: Path) -> None:
    project = _copy(pool, tmp_path, max_candidates=4)
    crops = _pool_crops(project)
    assert len({c.volume_id for c in crops}) == 2 and len(crops) >= 6
    labeled, queued = crops[0], crops[-1]
    round_id, number = _round(project)
    with project.session() as session:
        pool_volumes.set_crop_status(session, labeled.id, "labeled", label_path="l.zarr")
        pool_tasks.queue_crop(session, queued.id, round_id=round_id, slices=[1], pushed={})
    assert score.score_pool(project, round_id, number, None).scored == 4
    scored = set(_scores(project, round_id))
    assert labeled.id not in scored and queued.id not in scored
    by_volume = {c.id: c.volume_id for c in crops}
    assert {by_volume[c] for c in scored} == {labeled.volume_id, queued.volume_id}
    unlabeled = _pool_crops(project, "unlabeled")
    again = score.candidate_crops(project, unlabeled, number, set())
    assert {c.id for c in again} == scored
    later = score.candidate_crops(project, unlabeled, number + 1, set())
    assert {c.id for c in later} != scored


def test_without_a_budget_every_unlabeled_crop_is_scored(pool: Path, tmp_path: Path) -> None:
    project = _copy(pool, tmp_path)
    round_id, number = _round(project)
    assert score.score_pool(project, round_id, number, None).scored == len(_pool_crops(project))


# ------------------------------------------------------------------------ score cache


def test_an_unchanged_model_is_not_run_again(pool: Path, tmp_path: Path, fake: FakeModel) -> None:
    project = _copy(pool, tmp_path)
    model = _checkpoint(project, "a", b"weights of model a")
    first_id, first = _round(project)
    n = score.score_pool(project, first_id, first, model).scored
    assert fake.calls == n > 0
    second_id, second = _round(project)
    report = score.score_pool(project, second_id, second, model)
    assert fake.calls == n, "an unchanged model ran again"
    assert (report.cached, report.computed) == (n, 0)
    assert _scores(project, second_id) == _scores(project, first_id)
    for crop_id in _scores(project, second_id):
        path = score.analysis_path(project, second, crop_id)
        assert score.read_analysis(path, "consensus").shape == (16, 32, 32)


def test_a_new_checkpoint_invalidates_the_cache(
    pool: Path, tmp_path: Path, fake: FakeModel
) -> None:
    project = _copy(pool, tmp_path)
    first_id, first = _round(project)
    n = score.score_pool(project, first_id, first, _checkpoint(project, "a", b"model a")).scored
    second_id, second = _round(project)
    report = score.score_pool(project, second_id, second, _checkpoint(project, "b", b"model b"))
    assert fake.calls == 2 * n
    assert (report.cached, report.computed) == (0, n)


def test_a_changed_score_reduction_invalidates_the_cache(
    pool: Path, tmp_path: Path, fake: FakeModel
) -> None:
    project = _copy(pool, tmp_path)
    model = _checkpoint(project, "a", b"model a")
    first_id, first = _round(project)
    n = score.score_pool(project, first_id, first, model).scored
    data = project.config.model_dump()
    data["acquisition"]["reduction"] = "mean"
    changed = Project(project.root, Config.model_validate(data), project.engine)
    second_id, second = _round(changed)
    score.score_pool(changed, second_id, second, model)
    assert fake.calls == 2 * n


def test_a_budget_prefers_crops_the_model_already_scored(
    pool: Path, tmp_path: Path, fake: FakeModel
) -> None:
    project = _copy(pool, tmp_path, max_candidates=3)
    model = _checkpoint(project, "a", b"model a")
    first_id, first = _round(project)
    score.score_pool(project, first_id, first, model)
    second_id, second = _round(project)
    report = score.score_pool(project, second_id, second, model)
    assert fake.calls == 3 and report.cached == 3
    assert set(_scores(project, second_id)) == set(_scores(project, first_id))


# ------------------------------------------------------------------------ resumable stage


def test_a_killed_score_stage_resumes_without_rescoring(
    pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(score, "load_model", lambda path: FAKE_TRAINED)
    reference = _copy(pool, tmp_path / "reference")
    monkeypatch.setattr(score, "predict_array", FakeModel())
    ref_id, ref_number = _round(reference)
    n = score.score_pool(
        reference, ref_id, ref_number, _checkpoint(reference, "a", b"model")
    ).scored
    assert n >= 6

    project = _copy(pool, tmp_path / "killed")
    model = _checkpoint(project, "a", b"model")
    round_id, number = _round(project)
    monkeypatch.setattr(score, "predict_array", FakeModel(crash_after=5))
    with pytest.raises(CrashAfter):
        score.score_pool(project, round_id, number, model, commit_every=2)
    assert len(_scores(project, round_id)) == 4  # two committed batches of two

    rerun = FakeModel()
    monkeypatch.setattr(score, "predict_array", rerun)
    report = score.score_pool(project, round_id, number, model, commit_every=2)
    assert rerun.calls == n - 4
    assert (report.resumed, report.computed, report.scored) == (4, n - 4, n)
    assert _scores(project, round_id) == _scores(reference, ref_id)


def test_a_killed_model_free_round_resumes_too(
    pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _copy(pool, tmp_path)
    round_id, number = _round(project)
    real = score.intensity_descriptor
    calls: list[int] = []
    limit = [3]

    def counted(raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        if len(calls) == limit[0]:
            raise CrashAfter("killed")
        calls.append(1)
        return real(raw)

    monkeypatch.setattr(score, "intensity_descriptor", counted)
    with pytest.raises(CrashAfter):
        score.score_pool(project, round_id, number, None, commit_every=1)
    calls.clear()
    limit[0] = -1
    n = score.score_pool(project, round_id, number, None).scored
    assert len(calls) == n - 3
