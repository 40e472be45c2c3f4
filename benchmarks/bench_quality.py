"""End-to-end quality: train the demo config on synthetic MCFO volumes, segment held-out ones.

Trains on densely labeled synthetic (32, 128, 128) volumes, predicts a validation volume and
held-out test volumes, clusters the consensus (mean over samples) of foreground and embeddings
with mean shift, and reports IoU-matched F1 at IoU 0.5 (goal >= 0.5). The foreground threshold
and the bandwidth are chosen on the validation volume only. Also reported, to locate errors:
the foreground Dice and the F1 of clustering the TRUE foreground's embeddings.

    .venv/bin/python benchmarks/bench_quality.py [--steps 900] [--kind mheads] [--embed-background]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from activeseg.cluster import segment
from activeseg.config import Config, load_config
from activeseg.data.instances import Instances
from activeseg.data.synthetic import generate_mcfo
from activeseg.metrics import score_volume, threshold_table
from activeseg.models.checkpoint import TrainedModel, load_model
from activeseg.predict import predict_array
from activeseg.train import TrainingCrop, train_model

TRAIN_SEEDS = (0, 1, 2, 3)
VAL_SEED = 100
TEST_SEEDS = (200, 201, 202)
# Neurons fill ~5% of a synthetic volume; a threshold that keeps more than this is not tried.
MAX_FOREGROUND = 0.25
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Consensus:
    """Mean over samples of one volume's prediction, and its ground truth."""

    foreground: npt.NDArray[np.float32]  # (Z, Y, X)
    embedding: npt.NDArray[np.float32]  # (E, Z, Y, X)
    truth: Instances


def bench_config(steps: int, kind: str, embed_background: bool) -> Config:
    """Return the demo config with the training length, variant and loss option asked for."""
    config = load_config("demo")
    data = config.model_dump()
    data["train"]["steps"] = steps
    data["model"]["kind"] = kind
    data["loss"]["embed_background"] = embed_background
    return Config.model_validate(data)


def training_crops(config: Config) -> list[TrainingCrop]:
    """Return densely labeled synthetic volumes as training crops."""
    crops = []
    for seed in TRAIN_SEEDS:
        volume = generate_mcfo(config.synth.shape, config.synth.neurons, seed)
        labels = volume.instances.labels
        mask = np.ones(labels.shape, bool)
        overlap = volume.instances.overlap_mask()
        crops.append(TrainingCrop(volume.raw, labels, mask, overlap, f"synth-{seed}"))
    return crops


def consensus(trained: TrainedModel, seed: int) -> Consensus:
    """Return the consensus prediction of a held-out synthetic volume."""
    config = trained.config
    volume = generate_mcfo(config.synth.shape, config.synth.neurons, seed)
    prediction = predict_array(trained, volume.raw)
    return Consensus(
        prediction.foreground.mean(axis=0),
        prediction.embedding.mean(axis=0),
        volume.instances,
    )


def f1_at_05(labels: npt.NDArray[np.uint32], truth: Instances) -> float:
    """Return the F1 of IoU-matched instances at IoU 0.5."""
    row = threshold_table([score_volume(Instances.from_labels(labels), truth)])[0]
    return row["f1"] if np.isfinite(row["f1"]) else 0.0


def cluster(case: Consensus, threshold: float, bandwidth: float, min_size: int) -> float:
    """Return F1@0.5 of mean-shift instances of a consensus prediction."""
    if (case.foreground > threshold).mean() > MAX_FOREGROUND:
        return 0.0  # hopeless, and mean shift of most of the volume takes minutes
    labels = segment(
        case.foreground,
        case.embedding,
        threshold=threshold,
        bandwidth=bandwidth,
        min_size=min_size,
    )
    return f1_at_05(labels, case.truth)


def dice(case: Consensus, threshold: float) -> float:
    """Return the Dice of the thresholded foreground against the true foreground."""
    predicted, true = case.foreground > threshold, case.truth.labels > 0
    return float(2 * (predicted & true).sum() / max(predicted.sum() + true.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--kind", default="mheads")
    parser.add_argument("--embed-background", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the checkpoint here")
    args = parser.parse_args()
    config = bench_config(args.steps, args.kind, args.embed_background)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "model"
        result = train_model(training_crops(config), config, out)
        trained = load_model(result.checkpoint)
    print(
        f"trained {config.model.kind} (S={trained.model.n_samples}) {result.steps} steps in "
        f"{result.seconds:.0f} s ({result.steps / result.seconds:.2f} steps/s), "
        f"loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
    )
    val = consensus(trained, VAL_SEED)
    tests = [consensus(trained, seed) for seed in TEST_SEEDS]
    loss = config.loss
    bandwidths = (loss.delta_v, (loss.delta_v + loss.delta_d) / 2, loss.delta_d)
    min_size = config.cluster.min_size
    grid = {
        (t, b): cluster(val, t, b, min_size) for t, b in itertools.product(THRESHOLDS, bandwidths)
    }
    threshold, bandwidth = max(grid, key=lambda key: grid[key])
    print(
        f"validation: best F1@0.5 {grid[threshold, bandwidth]:.3f} at threshold {threshold}, "
        f"bandwidth {bandwidth}"
    )
    test_f1 = [cluster(case, threshold, bandwidth, min_size) for case in tests]
    true_fg = [
        cluster(
            Consensus((c.truth.labels > 0).astype(np.float32), c.embedding, c.truth),
            0.5,
            bandwidth,
            min_size,
        )
        for c in tests
    ]
    print(f"test foreground Dice @{threshold}: {np.mean([dice(c, threshold) for c in tests]):.3f}")
    print(f"test F1@0.5 clustering the TRUE foreground: {np.mean(true_fg):.3f}")
    print(
        f"test F1@0.5 end to end: {np.mean(test_f1):.3f} "
        f"(per volume {', '.join(f'{f:.2f}' for f in test_f1)}; goal >= 0.5)"
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
