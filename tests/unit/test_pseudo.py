"""Pseudo-labels: only confident voxels, never over a human label, derived from each model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from activeseg.core.pseudo import pseudo_labels
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CachedScore
from activeseg.workflows import pseudo
from activeseg.workflows.project import Project
from activeseg.workflows.simulate import create_demo_project


def maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    consensus = np.zeros((2, 4, 6), np.uint32)
    consensus[:, 1:3, 0:3] = 1
    consensus[:, 1:3, 3:6] = 2
    foreground = np.where(consensus > 0, 0.95, 0.05).astype(np.float32)
    mutual_information = np.full(consensus.shape, 0.01, np.float32)
    mutual_information[:, :, 5] = 0.3  # the model is unsure about the last column
    foreground[0, 0, 0] = 0.5  # neither confidently inside nor outside
    return consensus, mutual_information, foreground


def test_only_low_uncertainty_confident_voxels_enter_the_mask() -> None:
    consensus, mi, fg = maps()
    out = pseudo_labels(consensus, mi, fg, max_uncertainty=0.05, threshold=0.8)
    assert not out.mask[:, :, 5].any()  # high epistemic uncertainty: left out
    assert not out.mask[0, 0, 0]  # an ambiguous foreground probability: left out
    expected = (mi <= 0.05) & ~((np.arange(2)[:, None, None] == 0) & (fg == 0.5))
    assert np.array_equal(out.mask, expected)
    assert np.array_equal(out.labels[out.mask], consensus[out.mask])
    assert not out.labels[~out.mask].any()
    strict = pseudo_labels(consensus, mi, fg, max_uncertainty=0.0, threshold=0.8)
    assert not strict.mask.any() and strict.coverage == 0.0


def test_a_human_label_is_never_overridden() -> None:
    consensus, mi, fg = maps()
    human = np.zeros(consensus.shape, bool)
    human[1] = True  # a person labeled slice 1
    out = pseudo_labels(consensus, mi, fg, max_uncertainty=0.05, threshold=0.8, human=human)
    assert not out.mask[1].any() and not out.labels[1].any()
    assert out.mask[0].any()


def _with_pseudo(project: Project) -> Project:
    train = project.config.train.model_copy(update={"pseudo_labels": "consensus"})
    return replace(project, config=project.config.model_copy(update={"train": train}))


def _write_maps(path: Path, consensus: np.ndarray, shape: tuple[int, int, int]) -> None:
    root = zarr.open_group(path, mode="w")
    root.create_array("consensus", data=consensus)
    root.create_array("mutual_information", data=np.zeros(shape, np.float32))
    root.create_array("foreground", data=np.where(consensus > 0, 0.99, 0.01).astype(np.float32))


def test_pseudo_crops_follow_the_model_and_skip_labeled_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _with_pseudo(create_demo_project(tmp_path / "p", "smoke"))
    monkeypatch.setattr(pseudo, "model_key", lambda path, config: Path(path).name)
    with project.session() as session:
        crops = pool_volumes.list_crops(session, split="pool")
    shape = crops[0].shape
    entries = []
    for model, instance in (("model-a", 3), ("model-b", 7)):
        for crop in crops:
            consensus = np.zeros(shape, np.uint32)
            consensus[:, :4, :4] = instance
            path = project.root / "maps" / model / f"{crop.id}.zarr"
            _write_maps(path, consensus, shape)
            entries.append(CachedScore(crop.id, model, {"bald": 0.1}, project.relative(path)))
    human = crops[0]
    with project.session() as session:
        pool_rounds.cache_scores(session, entries)
        pool_tasks.queue_crop(session, human.id, round_id=None, slices=[0], pushed={})
    from_a = pseudo.pseudo_crops(project, Path("model-a"))
    from_b = pseudo.pseudo_crops(project, Path("model-b"))
    limit = project.config.train.pseudo_crops
    assert len(from_a) == len(from_b) == min(limit, len(crops) - 1)
    assert all(f"crop {human.id}" not in c.name for c in from_a)  # queued for a person
    assert {int(c.labels.max()) for c in from_a} == {3}  # model a's consensus
    assert {int(c.labels.max()) for c in from_b} == {7}  # a new model: derived again
    assert pseudo.pseudo_crops(project, None) == []
    off = replace(project, config=create_demo_project(tmp_path / "p", "smoke").config)
    assert pseudo.pseudo_crops(off, Path("model-a")) == []
