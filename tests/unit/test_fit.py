"""Checkpoints appear whole or not at all, and an unreadable one does not wedge warm starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from activeseg.core.models.checkpoint import save_checkpoint
from activeseg.core.models.normalization import Normalization
from activeseg.core.models.probabilistic import ProbabilisticModel
from activeseg.errors import InputError
from activeseg.pool import rounds as pool_rounds
from activeseg.workflows.fit import checkpoint_dir, warm_start_from
from activeseg.workflows.project import Project


def _checkpoint(project: Project, name: str) -> Path:
    config = project.config.model_copy(update={"model": project.config.model.with_channels(3)})
    model = ProbabilisticModel(config.model, seed=0)
    out = save_checkpoint(
        project.models_dir / name, model, config, Normalization((0.0,) * 3, (1.0,) * 3), {}
    )
    with project.session() as session:
        pool_rounds.add_checkpoint(
            session, round_id=None, path=project.relative(out), kind="mheads", steps=1,
            labeled_crops=1,
        )  # fmt: skip
    return out


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(smoke_project: Project) -> None:
    older = _checkpoint(smoke_project, "manual-000")
    newer = _checkpoint(smoke_project, "manual-001")
    assert warm_start_from(smoke_project) == newer
    weights = newer / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # power loss mid-write on another system
    assert warm_start_from(smoke_project) == older
    (older / "weights.pt").unlink()
    assert warm_start_from(smoke_project) is None


def test_a_checkpoint_is_never_written_over_and_leaves_no_partial(smoke_project: Project) -> None:
    out = _checkpoint(smoke_project, "manual-000")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match="never written over"):
        _checkpoint(smoke_project, "manual-000")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in smoke_project.models_dir.iterdir()] == ["manual-000"]


def test_an_unrecorded_round_folder_is_replaced(smoke_project: Project) -> None:
    leftover = smoke_project.models_dir / "round-002"
    leftover.mkdir(parents=True)
    (leftover / "weights.pt").write_bytes(b"half")
    assert checkpoint_dir(smoke_project, 2) == leftover and not leftover.exists()
