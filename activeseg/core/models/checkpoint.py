"""Self-describing model folders: weights, resolved config, normalization, training curve.

A checkpoint folder holds::

    config.yaml          the resolved Config the model was trained with (Config.to_yaml())
    weights.pt           state_dict of the ProbabilisticModel (every member)
    normalization.json   per-channel intensity percentiles (lower, upper)
    training.json        steps, seconds, final loss, per-step losses, warm start origin

``training.json`` is written last: a folder without it is an interrupted save.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from activeseg.config import Config, load_config
from activeseg.core.models.normalization import Normalization
from activeseg.core.models.probabilistic import ProbabilisticModel
from activeseg.durable import partial_name, replace_durably
from activeseg.errors import InputError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.pt"
NORMALIZATION_FILE = "normalization.json"
TRAINING_FILE = "training.json"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, NORMALIZATION_FILE, TRAINING_FILE)


@dataclass(frozen=True)
class TrainedModel:
    """A model ready for inference with the config and normalization it was trained with."""

    model: ProbabilisticModel
    config: Config
    normalization: Normalization
    path: Path | None = None


def save_checkpoint(
    out_dir: Path,
    model: ProbabilisticModel,
    config: Config,
    normalization: Normalization,
    training: dict[str, Any],
) -> Path:
    """Write a checkpoint folder and return its path; it appears complete and on disk, or not
    at all. ``out_dir`` must not exist yet."""
    if out_dir.exists():
        raise InputError(f"{out_dir} exists already; a checkpoint is never written over")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(out_dir)
    partial.mkdir()
    (partial / CONFIG_FILE).write_text(config.to_yaml())
    torch.save(model.state_dict(), partial / WEIGHTS_FILE)
    normalization.save(partial / NORMALIZATION_FILE)
    (partial / TRAINING_FILE).write_text(json.dumps(training, indent=1))
    replace_durably(partial, out_dir)
    logger.info("saved checkpoint %s", out_dir)
    return out_dir


def load_model(checkpoint_dir: Path) -> TrainedModel:
    """Return the model stored in a checkpoint folder, in eval mode, on the CPU."""
    checkpoint_dir = Path(checkpoint_dir)
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint_dir / name).is_file()]
    if missing:
        raise InputError(f"{checkpoint_dir} is not a complete checkpoint: missing {missing}")
    config = load_config(checkpoint_dir / CONFIG_FILE)
    model = ProbabilisticModel(config.model, seed=config.train.seed)
    model.load_state_dict(load_weights(checkpoint_dir))
    model.eval()
    normalization = Normalization.load(checkpoint_dir / NORMALIZATION_FILE)
    return TrainedModel(model, config, normalization, checkpoint_dir)


def load_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Return the state_dict stored in a checkpoint folder."""
    path = Path(checkpoint_dir) / WEIGHTS_FILE
    try:
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"cannot read model weights {path}: {exc}") from exc
    return state
