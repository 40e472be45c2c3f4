"""Why MC dropout's mutual information points away from the errors (BENCHMARKS.md, Uncertainty
per backbone): the same dropout samples with two kinds of normalization statistics.

Inference normalizes with fixed statistics, calibrated on the volume with dropout off
(``CalibratedGroupNorm``); training normalized every pass by its own statistics, after its
dropout masks. A dropped channel therefore shifts every voxel of the next layer's group at
inference, the same amount everywhere, in a way training never showed. This script trains a
dropout model, then scores the held-out volume's dropout samples

- "calibrated": as ``activeseg`` predicts (fixed statistics of the dropout-free pass);
- "per pass": every dropout pass normalized by its own statistics, as in training;

and prints, for each, the voxel error AUROC of the MI, split into foreground-call errors and
instance-identity errors, and the mean MI of correct background and of predicted foreground.

    nice -n 10 .venv/bin/python benchmarks/bench_dropout_inversion.py [--steps 300] \\
        [--shape 32 128 128] [--train-volumes 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_quality import TEST_SEEDS, training_crops

from activeseg.config import Config, load_config
from activeseg.core import metrics
from activeseg.core.cluster import segment_consensus
from activeseg.core.models.checkpoint import TrainedModel, load_model
from activeseg.core.models.unet import CalibratedGroupNorm
from activeseg.core.tiling import predict_array
from activeseg.core.training import train_model
from activeseg.core.uncertainty import mutual_information
from activeseg.data.synthetic import generate_mcfo
from activeseg.workflows.evaluate import _matched_truth


def per_pass_statistics(trained: TrainedModel) -> None:
    """Make every normalization layer use each input's own statistics (forget calibration)."""
    for module in trained.model.modules():
        if isinstance(module, CalibratedGroupNorm):
            module.tracked.zero_()
            module.calibrating = False


def report(name: str, trained: TrainedModel, seed: int, calibrate: bool) -> None:
    """Print the MI's error AUROCs of one held-out volume under one kind of statistics."""
    config = trained.config
    volume = generate_mcfo(config.synth.shape, config.synth.neurons, seed)
    if not calibrate:
        import activeseg.core.tiling as tiling

        original = tiling.calibrate
        tiling.calibrate = lambda trained, raw: per_pass_statistics(trained)
    try:
        prediction = predict_array(trained, volume.raw, core=config.synth.shape)  # one tile
    finally:
        if not calibrate:
            tiling.calibrate = original
    consensus = segment_consensus(
        prediction.foreground, prediction.embedding, **config.cluster.options()
    )
    truth = volume.instances.labels
    mi = mutual_information(prediction.foreground)
    predicted, true = consensus > 0, truth > 0
    wrong = _matched_truth(consensus, truth)[consensus] != truth
    both = predicted & true
    print(
        f"{name:10s} voxel AUROC {metrics.auroc(mi.ravel(), wrong.ravel()):.3f}  "
        f"fg-call AUROC {metrics.auroc(mi.ravel(), (predicted != true).ravel()):.3f}  "
        f"instance-voxel AUROC {metrics.auroc(mi[both], wrong[both]):.3f}  "
        f"MI correct bg {mi[~predicted & ~true].mean():.4f}  "
        f"MI predicted fg {mi[predicted].mean() if predicted.any() else 0:.4f}  "
        f"mean fg prob spread {prediction.foreground.std(axis=0).mean():.4f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128])
    parser.add_argument("--train-volumes", type=int, default=8)
    parser.add_argument("--model", type=Path, help="a trained dropout checkpoint")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_config("demo").model_dump()
    data["synth"]["shape"] = args.shape
    data["model"]["kind"] = "dropout"
    data["train"]["steps"] = args.steps
    config = Config.model_validate(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = (
            args.model
            or train_model(
                training_crops(config, args.train_volumes), config, Path(tmp) / "m"
            ).checkpoint
        )
        for seed in TEST_SEEDS[:2]:
            report("calibrated", load_model(path), seed, calibrate=True)
            report("per pass", load_model(path), seed, calibrate=False)


if __name__ == "__main__":
    main()
