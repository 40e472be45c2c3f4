"""Uncertainty quality per backbone: do the samples disagree where the segmentation is wrong?

For M-heads, a deep ensemble and MC dropout: train the demo config on bench_quality's synthetic
training volumes for a short fixed budget, predict held-out synthetic volumes, segment every
sample and the consensus with the demo cluster settings, and score the held-out volumes
pooled (stacked along z, ids kept apart) with ``activeseg.workflows.evaluate.uncertainty_report``:

- voxel error AUROC of the mutual information (goal > 0.75); a voxel is wrong when its
  foreground call or its instance (mapped to the best-overlapping true neuron) is wrong;
- instance error AUROC of 1 - stability + split risk + merge risk (goal > 0.7); an instance
  is wrong when it matches no neuron at IoU 0.5, is a split or is a merge;
- PAvPU with p(accurate | certain) and p(uncertain | inaccurate), best over MI quantiles as in
  ``activeseg evaluate --uncertainty``; ECE of the mean foreground probability; F1@0.5.

Budget: every backbone gets ``--steps`` network updates. The ensemble's K members share them
(steps // K each, so it trains as long as the others); ``--full-members`` gives every member
all the steps instead (K times the training time).

    .venv/bin/python benchmarks/bench_uncertainty.py [--steps 100] [--members 4] \\
        [--full-members] [--test-volumes 2] [--kinds mheads ensemble dropout] [--model DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_quality import TEST_SEEDS, training_crops

from activeseg.config import Config, load_config
from activeseg.core.cluster import segment_consensus, segment_samples
from activeseg.core.instances import Instances
from activeseg.core.metrics import score_volume, threshold_table
from activeseg.core.models.checkpoint import TRAINING_FILE, TrainedModel, load_model
from activeseg.core.tiling import predict_array
from activeseg.core.training import train_model
from activeseg.core.uncertainty import InstanceRisk, instance_uncertainty
from activeseg.data.synthetic import generate_mcfo
from activeseg.workflows.evaluate import uncertainty_report

GOALS = {"voxel_error_auroc": 0.75, "instance_error_auroc": 0.7}
KINDS = ("mheads", "ensemble", "dropout")


@dataclass(frozen=True)
class Case:
    """One held-out volume's prediction: consensus, per-sample foreground, instance risks."""

    consensus: npt.NDArray[np.uint32]  # (Z, Y, X)
    truth: npt.NDArray[np.uint32]  # (Z, Y, X)
    foreground: npt.NDArray[np.float32]  # (S, Z, Y, X)
    risks: list[InstanceRisk]


def backbone_config(kind: str, steps: int, members: int, full_members: bool) -> Config:
    """Return the demo config for one backbone; ensemble members share ``steps`` unless full."""
    data = load_config("demo").model_dump()
    data["model"]["kind"] = kind
    if kind == "ensemble":
        data["model"]["samples"] = members
        steps = steps if full_members else max(1, steps // members)
    data["train"]["steps"] = steps
    return Config.model_validate(data)


def predict_case(trained: TrainedModel, seed: int) -> Case:
    """Return the segmented prediction of the held-out synthetic volume of ``seed``."""
    config = trained.config
    volume = generate_mcfo(config.synth.shape, config.synth.neurons, seed)
    prediction = predict_array(trained, volume.raw)
    options = config.cluster.options()
    spaces = config.model.embedding_spaces
    consensus = segment_consensus(
        prediction.foreground, prediction.embedding, spaces=spaces, **options
    )
    samples = segment_samples(prediction.foreground, prediction.embedding, **options)
    risks = instance_uncertainty(consensus, samples)
    return Case(consensus, volume.instances.labels, prediction.foreground, risks)


def pooled(cases: Sequence[Case]) -> Case:
    """Return the cases stacked along z, every volume's ids shifted past the previous ones'."""
    consensus, truth, risks = [], [], []
    pred_offset = true_offset = 0
    for case in cases:
        consensus.append(np.where(case.consensus > 0, case.consensus + pred_offset, 0))
        truth.append(np.where(case.truth > 0, case.truth + true_offset, 0))
        risks += [dataclasses.replace(r, id=r.id + pred_offset) for r in case.risks]
        pred_offset += int(case.consensus.max(initial=0))
        true_offset += int(case.truth.max(initial=0))
    return Case(
        np.concatenate(consensus).astype(np.uint32),
        np.concatenate(truth).astype(np.uint32),
        np.concatenate([c.foreground for c in cases], axis=1),
        risks,
    )


def f1_at_05(cases: Sequence[Case]) -> float:
    """Return the F1 of IoU-matched instances at IoU 0.5, counts summed over the cases."""
    scores = [
        score_volume(Instances.from_labels(c.consensus), Instances.from_labels(c.truth))
        for c in cases
    ]
    return threshold_table(scores)[0]["f1"]


def run_backbone(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Return the uncertainty report of one backbone trained and tested as the args say."""
    config = backbone_config(kind, args.steps, args.members, args.full_members)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(training_crops(config), config, Path(tmp) / "model")
        return test_model(load_model(result.checkpoint), training_record(result.checkpoint), args)


def training_record(checkpoint: Path) -> dict[str, Any]:
    """Return what a checkpoint folder says about its training (steps, seconds, loss)."""
    record: dict[str, Any] = json.loads((checkpoint / TRAINING_FILE).read_text())
    return record


def test_model(
    trained: TrainedModel, training: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Return the uncertainty report of a trained model on the held-out volumes."""
    started = time.perf_counter()
    cases = [predict_case(trained, seed) for seed in TEST_SEEDS[: args.test_volumes]]
    whole = pooled(cases)
    report = uncertainty_report(whole.consensus, whole.truth, whole.foreground, whole.risks)
    members = len(trained.model.nets())
    print(
        f"{trained.config.model.kind}: S={trained.model.n_samples}, {members} x "
        f"{training['steps']} steps in {training['seconds']:.0f} s, final loss "
        f"{training['final_loss']:.3f}; test {time.perf_counter() - started:.0f} s; "
        f"PAvPU sweep {report['PAvPU_sweep']}",
        flush=True,
    )
    return report | {"f1": f1_at_05(cases), "train_s": training["seconds"]}


def cell(value: float, digits: int = 3) -> str:
    """Return a table cell: the value, or n/a when undefined."""
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def why_undefined(key: str, report: dict[str, Any]) -> str:
    """Return why an AUROC is NaN: one of the two classes is empty."""
    if key == "instance_error_auroc":
        n, bad = int(report["scored_instances"]), int(report["erroneous_instances"])
        return f"{n} instances, {bad} erroneous: AUROC needs both kinds"
    return "every voxel is right (or every voxel wrong): AUROC needs both kinds"


def print_table(reports: dict[str, dict[str, Any]]) -> None:
    """Print one row per backbone, then each goal's ratio and verdict."""
    header = (
        "backbone", "voxel AUROC", "inst AUROC", "inst (bad/all)", "PAvPU", "p(acc|cert)",
        "p(unc|inacc)", "ECE", "F1@0.5", "train s",
    )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for kind, r in reports.items():
        row = (
            kind, cell(r["voxel_error_auroc"]), cell(r["instance_error_auroc"]),
            f"{int(r['erroneous_instances'])}/{int(r['scored_instances'])}", cell(r["PAvPU"]),
            cell(r["p_accurate_given_certain"]), cell(r["p_uncertain_given_inaccurate"]),
            cell(r["ECE"], 4), cell(r["f1"]), f"{r['train_s']:.0f}",
        )  # fmt: skip
        print("| " + " | ".join(row) + " |")
    for kind, r in reports.items():
        for key, goal in GOALS.items():
            value = r[key]
            verdict = (
                f"{value:.3f} / {goal} = {value / goal:.2f}x: {'PASS' if value > goal else 'FAIL'}"
                if np.isfinite(value)
                else f"n/a ({why_undefined(key, r)})"
            )
            print(f"{kind} {key} > {goal}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="network updates per backbone")
    parser.add_argument("--members", type=int, default=4, help="ensemble members K")
    parser.add_argument("--full-members", action="store_true", help="every member gets --steps")
    volumes = range(1, len(TEST_SEEDS) + 1)
    parser.add_argument("--test-volumes", type=int, default=2, choices=volumes)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--model", type=Path, help="test this checkpoint instead of training")
    args = parser.parse_args()
    started = time.perf_counter()
    reports: dict[str, dict[str, Any]]
    if args.model:
        trained = load_model(args.model)
        record = training_record(args.model)
        reports = {trained.config.model.kind: test_model(trained, record, args)}
    else:
        reports = {kind: run_backbone(kind, args) for kind in args.kinds}
    print_table(reports)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
