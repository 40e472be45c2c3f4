"""Data-parallel training: N processes (gloo on the CPU) follow one process's training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import bright_tubes, smoke

from activeseg.config import Config
from activeseg.core.models.checkpoint import load_model
from activeseg.core.models.losses import Target
from activeseg.core.training import Shard, train_model
from activeseg.errors import InputError
from activeseg.workflows.fit import train_in_processes


def test_the_shards_of_a_batch_are_its_slices_in_rank_order() -> None:
    x = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3)
    labels = torch.arange(4)[:, None].expand(4, 5)
    target = Target(labels, labels > 0, labels > 1)
    parts = [Shard(rank, 2).part(x, target) for rank in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1].labels for p in parts]), labels)
    assert torch.equal(parts[1][1].overlap, labels[2:] > 1)
    with pytest.raises(InputError, match="does not divide"):
        Shard(0, 3).part(x, target)


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not divide among 3"):
        train_in_processes([bright_tubes()], smoke(2), tmp_path / "m", 3)


def _config(steps: int, *, per_item: bool) -> Config:
    """Return a smoke config with a global batch of 4; per_item: a loss that is a mean of
    per-item terms and a model without random draws (a single U-Net, no foreground term)."""
    config = smoke(steps, seed=2, precision="float32")
    update: dict[str, object] = {
        "train": config.train.model_copy(update={"batch_size": 4, "threads": 1})
    }
    if per_item:
        update["loss"] = config.loss.model_copy(update={"w_foreground": 0.0})
        update["model"] = config.model.model_copy(update={"kind": "single"})
    return config.model_copy(update=update)


@pytest.mark.slow
def test_two_processes_train_as_one_when_the_loss_is_a_mean_over_items(tmp_path: Path) -> None:
    config = _config(5, per_item=True)
    crops = [bright_tubes(seed=0), bright_tubes(seed=1)]
    one = train_model(crops, config, tmp_path / "one")
    two = train_in_processes(crops, config, tmp_path / "two", 2)
    assert two.steps == one.steps == 5 and one.losses[0] > one.losses[-1]
    np.testing.assert_allclose(two.losses, one.losses, rtol=1e-5)
    a, b = (load_model(r.checkpoint).model.state_dict() for r in (one, two))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


@pytest.mark.slow
def test_two_processes_follow_the_default_loss_curve_within_tolerance(tmp_path: Path) -> None:
    # Shake-shake draws its mixing weights per process, and the foreground loss normalizes
    # over the batch: each process's loss is not exactly its share of the global one.
    config = _config(4, per_item=False)
    crops = [bright_tubes(seed=0), bright_tubes(seed=1)]
    one = train_model(crops, config, tmp_path / "one")
    two = train_in_processes(crops, config, tmp_path / "two", 2)
    np.testing.assert_allclose(two.losses[0], one.losses[0], rtol=0.01)
    np.testing.assert_allclose(two.losses, one.losses, rtol=0.15)
