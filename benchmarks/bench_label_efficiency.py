"""Label efficiency: every acquisition strategy against random, with bootstrap confidence.

Creates one synthetic starting project (the demo config, enlarged: ``--pool-volumes`` pool
volumes of 4 candidate crops each, ``--val-volumes`` validation volumes), then runs each
(variant, seed) in its own copy of it: round 0 picks the same model-free diverse batch for
all, later rounds rank with the variant, the simulated annotator answers from hidden ground
truth with realistic noise (missed thin fragments, boundary jitter, merged touching neurons;
its parameters are stored with every run). Variants:

- random, uncertainty, bald, instance: the strategy alone (no diversity);
- instance+diversity: instance ranking spread over the embedding descriptors;
- cost-aware: instance score per expected annotation cost;
- <variant>+pseudo: a variant with ``train.pseudo_labels: consensus``.

Resumable and cumulative: each run writes ``<results>/<variant>-<seed>.json`` (its history,
including labels spent in the annotator's units, its config and where it ran) and is skipped
when that file exists, so runs can be added later (more seeds, a GPU with ``--device cuda``).
The report reads every run file in ``<results>`` with the same setup: learning curves of avF1
and AP50 against labels spent, in crops and in annotator units (slices looked at, instance
edits), as means over seeds with bootstrap 95 % bands (figure saved), and the labels each
variant needs to reach random's final avF1, as a fraction of random's, with its bootstrap CI
(goal: <= 0.6, upper end < 0.8).

    .venv/bin/python benchmarks/bench_label_efficiency.py --work /tmp/le \\
        [--results benchmarks/results/label_efficiency] [--variants random instance ...] \\
        [--seeds 5] [--rounds 8] [--pool-volumes 16] [--val-volumes 3] [--batch 2] \\
        [--steps N] [--device cuda] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.config import Config, load_config
from activeseg.workflows.annotators import REALISTIC
from activeseg.workflows.simulate import copy_project, create_demo_project, run_rounds

GOAL, GOAL_UPPER = 0.6, 0.8
METRICS = ("avF1", "AP50")
UNITS = ("crops", "slices", "edits")
VARIANTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "random": ("random", {"acquisition": {"diversity": False}}),
    "uncertainty": ("uncertainty", {"acquisition": {"diversity": False}}),
    "bald": ("bald", {"acquisition": {"diversity": False}}),
    "instance": ("instance", {"acquisition": {"diversity": False}}),
    "instance+diversity": ("instance", {"acquisition": {"diversity": True}}),
    "cost-aware": ("instance", {"acquisition": {"diversity": False, "cost_aware": True}}),
}
PSEUDO = {"train": {"pseudo_labels": "consensus"}}
BOOTSTRAP = 2000
SPENT_KEYS = ("slices", "repainted", "edits")


def variant(name: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """Return (strategy, config overrides) of a variant name (``<variant>+pseudo`` allowed)."""
    base, pseudo = (name[: -len("+pseudo")], True) if name.endswith("+pseudo") else (name, False)
    if base not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)} (+pseudo)")
    strategy, overrides = VARIANTS[base]
    if pseudo:
        overrides = {**overrides, **PSEUDO}
    return strategy, overrides


def with_sections(config: Config, updates: Mapping[str, Mapping[str, Any]]) -> Config:
    """Return the config with the given section fields replaced (validated)."""
    data = config.model_dump()
    for section, fields in updates.items():
        data[section] = {**data[section], **fields}
    return Config.model_validate(data)


def start_config(args: argparse.Namespace) -> Config:
    """Return the starting project's config: the base config enlarged, realistic annotator."""
    config = load_config(args.config)
    updates: dict[str, dict[str, Any]] = {
        "synth": {"pool_volumes": args.pool_volumes, "val_volumes": args.val_volumes},
        "acquisition": {"batch_size": args.batch},
        "loop": {"annotator": "simulated", "noise": asdict(REALISTIC) if args.noise else {}},
        "train": {"device": args.device},
    }
    if args.steps:
        updates["train"]["steps"] = args.steps
    if args.threads:
        updates["train"]["threads"] = args.threads
    return with_sections(config, updates)


def setup_key(args: argparse.Namespace) -> dict[str, Any]:
    """Return what makes runs comparable (runs with another setup are left out of a report)."""
    return {
        "config": args.config,
        "pool_volumes": args.pool_volumes,
        "val_volumes": args.val_volumes,
        "batch": args.batch,
        "rounds": args.rounds,
        "steps": args.steps,
        "noise": args.noise,
    }


def run_one(args: argparse.Namespace, name: str, seed: int, start: Path) -> Path:
    """Run one (variant, seed) unless its result file exists; return the file."""
    out = args.results / f"{name}-{seed}.json"
    if out.exists():
        return out
    strategy, overrides = variant(name)
    project = create_demo_project(start, args.work / "config.yaml")
    seeded: dict[str, dict[str, Any]] = {
        "acquisition": {"strategy": strategy, "seed": seed},
        "train": {"seed": seed},
    }
    config = with_sections(project.config, seeded)
    config = with_sections(config, overrides)
    started = time.perf_counter()
    copy = copy_project(project, args.work / "runs" / f"{name}-{seed}", config)
    history = run_rounds(copy, args.rounds, strategy=strategy, label=f"{name}-{seed}")
    record = {
        "variant": name,
        "seed": seed,
        "setup": setup_key(args),
        "noise": copy.config.loop.noise.model_dump(),
        "device": args.device,
        "host": platform.node(),
        "seconds": time.perf_counter() - started,
        "config": copy.config.to_yaml(),
        "rounds": [row.as_dict() for row in history],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1, default=str))
    partial.replace(out)
    print(f"{name} seed {seed}: {record['seconds']:.0f} s", flush=True)
    return out


def points(run: Mapping[str, Any], metric: str, unit: str) -> list[tuple[float, float]]:
    """Return (labels spent in ``unit``, metric) of a run's evaluated rounds."""
    found = []
    for row in run["rounds"]:
        value = row["metrics"].get(metric)
        if value is None or not row["trained_on"]:
            continue
        if unit == "crops":
            spent = float(row["trained_on"])
        else:
            if row.get("spent") is None:
                continue
            spent = float(row["spent"][unit])
        found.append((spent, float(value)))
    return found


def curves(runs: Sequence[Mapping[str, Any]], metric: str, unit: str) -> np.ndarray:
    """Return (seeds, rounds, 2) of (spent, metric), cut to the shortest run."""
    each = [points(run, metric, unit) for run in runs]
    n = min(len(p) for p in each)
    return np.array([p[:n] for p in each], dtype=np.float64).reshape(len(each), n, 2)


def bootstrap_band(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Return (mean, low, high): the mean over seeds (axis 0) and its bootstrap 95 % band."""
    picks = rng.integers(0, len(values), (BOOTSTRAP, len(values)))
    means = values[picks].mean(axis=1)
    return values.mean(axis=0), *np.percentile(means, [2.5, 97.5], axis=0)


def labels_to_reach(labels: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """Return the labels at which a curve first reaches ``target`` (linear), or None."""
    for i, value in enumerate(values):
        if value >= target:
            if i == 0:
                return float(labels[0])
            x0, x1, y0, y1 = labels[i - 1], labels[i], values[i - 1], values[i]
            return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))
    return None


def fraction_needed(
    random: np.ndarray, other: np.ndarray, rng: np.random.Generator | None = None
) -> float | None:
    """Return the share of random's final labels ``other`` needs to reach random's final
    mean metric (None: never), on seed resamples when ``rng`` is given. Curves: (S, R, 2)."""
    if rng is not None:
        random = random[rng.integers(0, len(random), len(random))]
        other = other[rng.integers(0, len(other), len(other))]
    target, budget = random[:, -1, 1].mean(), random[:, -1, 0].mean()
    needed = labels_to_reach(other[:, :, 0].mean(axis=0), other[:, :, 1].mean(axis=0), target)
    return None if needed is None else needed / budget


def fraction_ci(random: np.ndarray, other: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Return (share of never-reached resamples, 2.5 %, 97.5 %) of fraction_needed; resamples
    that never reach the target count as 'more than all of random's labels' (inf)."""
    rng = np.random.default_rng(seed)
    draws = [fraction_needed(random, other, rng) for _ in range(BOOTSTRAP)]
    values = np.array([np.inf if d is None else d for d in draws])
    low, high = np.percentile(values, [2.5, 97.5], method="nearest")  # inf: never reached
    return float(np.isinf(values).mean()), float(low), float(high)


def load_runs(results: Path, setup: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Return the run records of this setup by variant, seeds in order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("setup") == dict(setup):
            runs.setdefault(record["variant"], []).append(record)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in runs.items()}


def plot(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Draw avF1 and AP50 against labels spent (crops, slices, edits) with 95 % bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(len(METRICS), len(UNITS), figsize=(5 * len(UNITS), 3.8 * 2))
    for (i, metric), (j, unit) in ((m, u) for m in enumerate(METRICS) for u in enumerate(UNITS)):
        ax = axes[i][j]
        for name, records in runs.items():
            data = curves(records, metric, unit)
            if data.size == 0:
                continue
            x = data[:, :, 0].mean(axis=0)
            mean, low, high = bootstrap_band(data[:, :, 1], rng)
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{name} (n={len(records)})")
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        ax.set(xlabel=f"labels spent ({unit})", ylabel=f"validation {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("label efficiency: mean over seeds, bootstrap 95 % bands")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(args: argparse.Namespace) -> None:
    """Print the comparison of every run of this setup in the results folder."""
    runs = load_runs(args.results, setup_key(args))
    if "random" not in runs:
        print("no random runs yet: nothing to compare against")
        return
    rng = np.random.default_rng(0)
    print(f"setup {setup_key(args)}; runs: {', '.join(f'{k} x{len(v)}' for k, v in runs.items())}")
    for metric in METRICS:
        print(f"\nvalidation {metric} by labeled crops, mean [95 % bootstrap band]:")
        for name, records in runs.items():
            data = curves(records, metric, "crops")
            mean, low, high = bootstrap_band(data[:, :, 1], rng)
            shown = "  ".join(
                f"{x:.0f}: {m:.3f} [{lo:.3f}, {hi:.3f}]"
                for x, m, lo, hi in zip(data[0, :, 0], mean, low, high, strict=True)
            )
            print(f"  {name:>20}  {shown}")
    for unit in UNITS:
        random = curves(runs["random"], "avF1", unit)
        if random.size == 0:
            continue
        print(
            f"\nlabels ({unit}) to reach random's final avF1 {random[:, -1, 1].mean():.3f} "
            f"(random spent {random[:, -1, 0].mean():.1f} {unit}; goal <= {GOAL}, CI top < "
            f"{GOAL_UPPER}):"
        )
        for name, records in runs.items():
            if name == "random":
                continue
            other = curves(records, "avF1", unit)
            point = fraction_needed(random, other)
            never, ci_low, ci_high = fraction_ci(random, other)
            shown = "not reached" if point is None else f"{point:.2f} of random's"
            print(
                f"  {name:>20}  {shown}  95 % CI [{ci_low:.2f}, {ci_high:.2f}]"
                f"  (never reached in {never:.0%} of resamples)"
            )
    print("\nspent by the last round, mean over seeds:")
    for name, records in runs.items():
        spent = [r["rounds"][-1]["spent"] for r in records if r["rounds"][-1].get("spent")]
        means = [float(np.mean([x[k] for x in spent])) if spent else np.nan for k in SPENT_KEYS]
        shown = "  ".join(f"{k} {v:.0f}" for k, v in zip(SPENT_KEYS, means, strict=True))
        print(f"  {name:>20}  {shown}")
    figure = plot(runs, args.results / "label-efficiency.png")
    print(f"\nfigure: {figure}")


def main() -> None:
    """Run the missing (variant, seed) runs, then report every run of this setup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", "--out", type=Path, required=True, help="projects go here")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/label_efficiency"))
    parser.add_argument(
        "--variants", "--strategies", nargs="+", default=[*VARIANTS, "instance+pseudo"]
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--pool-volumes", type=int, default=16, help="4 candidate crops each")
    parser.add_argument("--val-volumes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, help="training steps per round (config's if unset)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="CPU threads (1 on a crowded machine)")
    parser.add_argument("--no-noise", dest="noise", action="store_false", help="exact annotator")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    for name in args.variants:
        variant(name)
    if not args.report_only:
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / "config.yaml").write_text(start_config(args).to_yaml())
        start = args.work / "start"
        create_demo_project(start, args.work / "config.yaml")
        started = time.perf_counter()
        for seed in range(args.seeds):  # seed-major: every variant gets seed 0 first
            for name in args.variants:
                run_one(args, name, seed, start)
        print(f"runs done in {time.perf_counter() - started:.0f} s")
    report(args)


if __name__ == "__main__":
    main()
