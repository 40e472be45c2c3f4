"""The seed's comparison of probabilistic backbones, at an equal wall-clock training budget.

Every row (single, M-heads with and without shake-shake, a deep ensemble of K = 4, MC dropout,
Bayes by Backprop, the probabilistic U-Net, an ensemble of M-heads; each with and without the
aleatoric heads) trains the demo config on bench_quality's synthetic volumes for
``--budget-seconds`` of training (wall-clock, or with ``--clock cpu`` this process's CPU
seconds, fair on a shared CPU) (the steps that fit are measured by a short probe run first,
and recorded), for ``--seeds`` seeds, and is scored on held-out synthetic volumes:

- F1@0.5 (IoU-matched) and FISBe's avF1 of the consensus;
- voxel error AUROC of the mutual information, instance error AUROC of the instance risk;
- PAvPU, p(accurate | certain), p(uncertain | inaccurate) at the MI threshold chosen on the
  validation volumes (Mukhoti & Gal), not on the volumes scored; ECE of the mean foreground;
- aleatoric AUROC: how well the predicted embedding scale finds voxel errors (aleatoric rows);
- inference cost: the seconds of sampling one validation volume over those of one
  deterministic pass (an untrained single network of the same widths), train seconds per
  step, parameters.

Each (row, seed) writes benchmarks/results/backbones/<row>-<seed>.json and is skipped when the
file exists, so an interrupted run resumes; rows run seed by seed (every row's first seed,
then every row's second), so a short run still fills every row. On a machine shared with
other work neither clock is fair (threads spinning in contention count as CPU time too):
``--steps N`` gives every row N network updates instead (an ensemble's members share them).
The table prints mean ± the spread (sample standard deviation) over the seeds present.

    nice -n 10 .venv/bin/python benchmarks/bench_backbones.py [--budget-seconds 600] \\
        [--seeds 3] [--device cpu|cuda] [--rows single mheads ...] [--samples 4] \\
        [--train-volumes 32] [--val-volumes 2] [--test-volumes 5] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from bench_quality import TEST_SEEDS, VAL_SEEDS, training_crops
from bench_uncertainty import Case, f1_at_05, pooled

from activeseg.config import Config, load_config
from activeseg.core import metrics
from activeseg.core.cluster import segment_consensus, segment_samples
from activeseg.core.instances import Instances
from activeseg.core.models.checkpoint import TrainedModel, load_model
from activeseg.core.models.normalization import Normalization
from activeseg.core.models.probabilistic import ProbabilisticModel
from activeseg.core.tiling import Prediction, predict_array
from activeseg.core.training import TrainingCrop, train_model
from activeseg.core.uncertainty import instance_uncertainty, mutual_information
from activeseg.data.synthetic import generate_mcfo
from activeseg.workflows.evaluate import (
    _matched_truth,
    choose_pavpu_threshold,
    pavpu_curve,
    uncertainty_report,
)

RESULTS = Path(__file__).parent / "results" / "backbones"
# The model section of each row (on top of the demo config); "+al" rows add aleatoric heads.
BACKBONES: dict[str, dict[str, Any]] = {
    "single": {"kind": "single"},
    "mheads": {"kind": "mheads"},
    "mheads-noshake": {"kind": "mheads", "shake_shake": False},
    "ensemble4": {"kind": "ensemble", "samples": 4},
    "dropout": {"kind": "dropout"},
    "bbb": {"kind": "bbb"},
    "probunet": {"kind": "probunet"},
    "ensemble-mheads": {"kind": "mheads", "members": 2},
}
ROWS = tuple(name + suffix for name in BACKBONES for suffix in ("", "+al"))
PROBE_STEPS = 4
COLUMNS = (
    ("f1", "F1@0.5"), ("avF1", "avF1"), ("voxel_error_auroc", "voxel AUROC"),
    ("instance_error_auroc", "inst AUROC"), ("PAvPU", "PAvPU"),
    ("p_accurate_given_certain", "p(acc\\|cert)"),
    ("p_uncertain_given_inaccurate", "p(unc\\|inacc)"),
    ("ECE", "ECE"), ("aleatoric_auroc", "aleat AUROC"), ("fg_error_auroc", "fg-call AUROC"),
    ("instance_voxel_error_auroc", "inst-voxel AUROC"), ("inference_ratio", "infer x"),
    ("train_s_per_step", "s/step"), ("steps", "steps"),
)  # fmt: skip


# What the budget and the costs are measured in: wall-clock seconds (a machine of one's own,
# a GPU), or the process's CPU seconds (a shared CPU, where other work takes the cores).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def demo_data(shape: list[int] | None) -> dict[str, Any]:
    """Return the demo config as a mapping, its synthetic volumes of shape when given."""
    data = load_config("demo").model_dump()
    if shape:
        data["synth"]["shape"] = shape
    return data


def row_config(row: str, seed: int, args: argparse.Namespace) -> Config:
    """Return the demo config of one row and seed."""
    data = demo_data(args.shape)
    name, aleatoric = row.removesuffix("+al"), row.endswith("+al")
    data["model"].update(samples=args.samples, aleatoric=aleatoric)
    data["model"].update(BACKBONES[name])
    if name == "ensemble-mheads":
        data["model"]["samples"] = max(2, args.samples // 2)
    data["train"].update(seed=seed, device=args.device, threads=args.threads)
    return Config.model_validate(data)


def with_steps(config: Config, steps: int) -> Config:
    """Return config training for steps."""
    return config.model_copy(update={"train": config.train.model_copy(update={"steps": steps})})


@cache
def crops(volumes: int, shape: tuple[int, ...] | None) -> list[TrainingCrop]:
    """Return bench_quality's densely labeled synthetic training volumes (made once)."""
    return training_crops(Config.model_validate(demo_data(list(shape) if shape else None)), volumes)


def seconds_per_step(config: Config, train_crops: list[TrainingCrop]) -> float:
    """Return the seconds of one training step, from a short probe run (its setup left out)."""
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        train_model(
            train_crops,
            with_steps(config, PROBE_STEPS),
            Path(tmp) / "probe",
            progress=lambda step, total, loss: stamps.append(clock()),
        )
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def predict_case(trained: TrainedModel, seed: int) -> tuple[Case, npt.NDArray[np.float32] | None]:
    """Return the held-out volume of seed segmented, and its mean embedding scale or None."""
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
    scale = prediction.embedding_scale
    case = Case(consensus, volume.instances.labels, prediction.foreground, risks)
    return case, None if scale is None else scale.mean(axis=0)


def timed_prediction(trained: TrainedModel, raw: npt.NDArray[Any]) -> float:
    """Return the seconds of predicting raw (every sample, no clustering)."""
    started = clock()
    prediction: Prediction = predict_array(trained, raw)
    del prediction
    return clock() - started


@cache
def deterministic_seconds(
    widths: tuple[int, ...], device: str, shape: tuple[int, ...] | None
) -> float:
    """Return the seconds of one deterministic pass (a single network) over a val volume."""
    config = demo_data(list(shape) if shape else None)
    config["model"].update(kind="single", widths=list(widths), in_channels=3)
    config["train"]["device"] = device
    parsed = Config.model_validate(config)
    volume = generate_mcfo(parsed.synth.shape, parsed.synth.neurons, VAL_SEEDS[0])
    normalization = Normalization.from_volumes([volume.raw], 0, parsed.model.intensity)
    model = ProbabilisticModel(parsed.model).eval()
    trained = TrainedModel(model, parsed, normalization)
    timed_prediction(trained, volume.raw)  # warm up
    return min(timed_prediction(trained, volume.raw) for _ in range(2))


def run_one(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Return the measurements of one row trained with one seed."""
    config = row_config(row, seed, args)
    shape = tuple(args.shape) if args.shape else None
    train_crops = crops(args.train_volumes, shape)
    per_step = seconds_per_step(config, train_crops)
    steps = max(1, int(args.budget_seconds / per_step))
    if args.steps:  # equal network updates, members sharing them (a contended machine)
        steps = max(1, args.steps // config.model.embedding_spaces)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(train_crops, with_steps(config, steps), Path(tmp) / "model")
        trained = load_model(result.checkpoint)
    volume = generate_mcfo(config.synth.shape, config.synth.neurons, VAL_SEEDS[0])
    infer = timed_prediction(trained, volume.raw)
    reference = deterministic_seconds(tuple(config.model.widths), args.device, shape)
    val = [predict_case(trained, s)[0] for s in VAL_SEEDS[: args.val_volumes]]
    whole_val = pooled(val)
    val_curve = pavpu_curve(
        whole_val.consensus, whole_val.truth, mutual_information(whole_val.foreground)
    )
    threshold = choose_pavpu_threshold(val_curve)
    tests = [predict_case(trained, s) for s in TEST_SEEDS[: args.test_volumes]]
    cases = [case for case, _ in tests]
    whole = pooled(cases)
    report = uncertainty_report(
        whole.consensus, whole.truth, whole.foreground, whole.risks, threshold=threshold
    )
    scores = [
        metrics.score_volume(Instances.from_labels(c.consensus), Instances.from_labels(c.truth))
        for c in cases
    ]
    return {
        "row": row, "seed": seed, "device": args.device, "budget_s": args.budget_seconds,
        "clock": args.clock, "fixed_steps": args.steps, "shape": list(config.synth.shape),
        "steps": result.steps, "train_s": result.seconds, "train_s_per_step": per_step,
        "precision": result.precision, "params": sum(p.numel() for p in trained.model.parameters()),
        "samples": trained.model.n_samples, "inference_s": infer, "deterministic_s": reference,
        "inference_ratio": infer / reference, "f1": f1_at_05(cases),
        "avF1": metrics.summarize(scores)["avF1"], "aleatoric_auroc": aleatoric_auroc(tests),
        **error_kinds(whole),
        **{k: v for k, v in report.items() if k != "PAvPU_sweep"},
    }  # fmt: skip


def aleatoric_auroc(tests: list[tuple[Case, npt.NDArray[np.float32] | None]]) -> float:
    """Return the voxel error AUROC of the mean embedding scale (NaN without one)."""
    if any(scale is None for _, scale in tests):
        return float("nan")
    errors = [(_matched_truth(c.consensus, c.truth)[c.consensus] != c.truth) for c, _ in tests]
    scales = np.concatenate([np.ravel(s) for _, s in tests if s is not None])
    return metrics.auroc(scales, np.concatenate([e.ravel() for e in errors]))


def error_kinds(case: Case) -> dict[str, float]:
    """Return the MI's error AUROC split by kind of error: foreground calls (every voxel), and
    instance identity (voxels that are foreground in both prediction and truth); and the mean
    MI of correct background and of predicted foreground (where the samples disagree most)."""
    mi = mutual_information(case.foreground)
    predicted, true = case.consensus > 0, case.truth > 0
    both = predicted & true
    wrong_instance = _matched_truth(case.consensus, case.truth)[case.consensus] != case.truth
    return {
        "fg_error_auroc": metrics.auroc(mi.ravel(), (predicted != true).ravel()),
        "instance_voxel_error_auroc": metrics.auroc(mi[both], wrong_instance[both]),
        "mi_correct_background": float(mi[~predicted & ~true].mean()),
        "mi_predicted_foreground": float(mi[predicted].mean()) if predicted.any() else 0.0,
        "instance_error_share": float(
            wrong_instance[both].sum() / max(1, (wrong_instance & (predicted | true)).sum())
        ),
    }


def result_path(row: str, seed: int) -> Path:
    """Return where one (row, seed) result is stored."""
    return RESULTS / f"{row}-{seed}.json"


def save(path: Path, record: dict[str, Any]) -> None:
    """Write record as JSON to path through a unique temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=1, default=float))
    partial.replace(path)


def cell(values: list[float], digits: int = 3) -> str:
    """Return 'mean ± spread' of the finite values (n/a when none)."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "n/a"
    spread = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return f"{np.mean(finite):.{digits}f} ± {spread:.{digits}f}"


def print_table(rows: list[str], seeds: int) -> None:
    """Print one line per row: mean ± spread over its stored seeds, with the F1 ratio to single."""
    paths = {row: [result_path(row, s) for s in range(seeds)] for row in rows}
    records = {row: [json.loads(p.read_text()) for p in found if p.exists()]
               for row, found in paths.items()}  # fmt: skip
    header = ["row", "seeds", *(name for _, name in COLUMNS), "params", "F1 / single"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    reference = np.mean([r["f1"] for r in records.get("single", [])] or [float("nan")])
    for row, found in records.items():
        if not found:
            print(f"| {row} | 0 |" + " |" * (len(header) - 2))
            continue
        digits = {"steps": 0, "inference_ratio": 2, "train_s_per_step": 3}
        cells = [cell([float(r[key]) for r in found], digits.get(key, 3)) for key, _ in COLUMNS]
        f1 = float(np.mean([r["f1"] for r in found]))
        ratio = f"{f1 / reference:.2f}" if reference > 0 else "n/a (single F1 0)"
        line = [row, str(len(found)), *cells, str(found[0]["params"]), ratio]
        print("| " + " | ".join(line) + " |")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=600.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--samples", type=int, default=4, help="M heads, K members, S draws")
    parser.add_argument("--train-volumes", type=int, default=32)
    parser.add_argument("--val-volumes", type=int, default=2, choices=range(1, 9))
    parser.add_argument("--test-volumes", type=int, default=5, choices=range(1, 6))
    parser.add_argument("--table-only", action="store_true", help="print the stored results")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=tuple(CLOCKS),
        help="budget and costs in wall-clock or this process's CPU seconds",
    )
    parser.add_argument("--shape", type=int, nargs=3, help="synthetic volume shape (Z Y X)")
    parser.add_argument(
        "--steps", type=int, help="instead of the budget: this many updates, members sharing them"
    )
    return parser.parse_args()


def main() -> None:
    global clock
    args = arguments()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    if not args.table_only:
        for seed in range(args.seeds):
            for row in args.rows:
                path = result_path(row, seed)
                if path.exists():
                    continue
                started = time.perf_counter()
                record = run_one(row, seed, args)
                save(path, record)
                print(
                    f"{row} seed {seed}: {record['steps']} steps, F1@0.5 {record['f1']:.3f}, "
                    f"voxel AUROC {record['voxel_error_auroc']:.3f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    print_table(list(args.rows), args.seeds)


if __name__ == "__main__":
    main()
