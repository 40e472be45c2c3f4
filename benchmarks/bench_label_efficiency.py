"""Label efficiency: uncertainty-based selection vs random on the synthetic pool.

Creates one synthetic project (the demo config: MCFO-like pool and val volumes), then runs
``activeseg simulate``: every strategy and seed in its own copy of that starting project, the
same batch per round, the simulated annotator answering from hidden ground truth. Reports the
validation avF1 / AP50 vs labeled crops per strategy (mean ± std over seeds), the fraction of
random's labels that the best strategy needs to reach random's final avF1 (goal <= 0.6), and
the correction effort: the fraction of shown voxels the annotator repainted in the
pre-annotations. Writes the learning curves and a JSON of every run next to the project.

    .venv/bin/python benchmarks/bench_label_efficiency.py --out /tmp/label-efficiency \\
        [--rounds 5] [--seeds 3] [--strategies random instance bald] [--config demo] \\
        [--pool-volumes N]

``--pool-volumes`` enlarges the demo's pool (4 volumes = 16 candidate crops): with 16, nine
labeled crops are most of the pool, and any strategy ends up picking much of what random picks.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from activeseg.config import load_config
from activeseg.workflows.history import RoundSummary, plot_history
from activeseg.workflows.simulate import create_demo_project, simulate

GOAL = 0.6
METRICS = ("avF1", "AP50")


def curve(history: Sequence[RoundSummary], metric: str) -> tuple[list[int], list[float]]:
    """Return (labeled crops trained on, metric) of the rounds that were evaluated."""
    rows = [r for r in history if r.metrics.get(metric) is not None and r.trained_on]
    return [int(r.trained_on or 0) for r in rows], [float(r.metrics[metric]) for r in rows]


def mean_curve(
    runs: Sequence[Sequence[RoundSummary]], metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (labels, mean, std) over seeds, round by round (runs share the batch size)."""
    curves = [curve(run, metric) for run in runs]
    n = min(len(x) for x, _ in curves)
    labels = np.array([np.mean([x[i] for x, _ in curves]) for i in range(n)])
    values = np.array([[y[i] for _, y in curves] for i in range(n)])
    return labels, values.mean(axis=1), values.std(axis=1)


def labels_to_reach(labels: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """Return the labeled crops at which a curve first reaches ``target`` (linear), or None."""
    for i, value in enumerate(values):
        if value >= target:
            if i == 0:
                return float(labels[0])
            x0, x1, y0, y1 = labels[i - 1], labels[i], values[i - 1], values[i]
            return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))
    return None


def correction(runs: Sequence[Sequence[RoundSummary]]) -> float | None:
    """Return the mean fraction of shown voxels repainted over all answered pre-annotations."""
    values = [r.correction_fraction for run in runs for r in run if r.correction_fraction]
    return float(np.mean(values)) if values else None


def main() -> None:
    """Run the simulations and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the projects go")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=["random", "instance", "bald"])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--pool-volumes", type=int, help="synthetic pool volumes (4 crops each)")
    args = parser.parse_args()
    if "random" not in args.strategies:
        parser.error("random is the baseline: include it in --strategies")

    started = time.perf_counter()
    config = load_config(args.config)
    if args.pool_volumes:
        synth = config.synth.model_copy(update={"pool_volumes": args.pool_volumes})
        config = config.model_copy(update={"synth": synth})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.yaml").write_text(config.to_yaml())
    project = create_demo_project(args.out / "start", args.out / "config.yaml")
    runs = simulate(project, args.rounds, args.strategies, args.seeds)
    by_strategy = {s: [runs[f"{s}-seed{k}"] for k in range(args.seeds)] for s in args.strategies}
    rows = {name: [r.as_dict() for r in run] for name, run in runs.items()}
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1, default=str))
    plot = plot_history(runs, args.out / "label-efficiency.png")

    print(
        f"{args.rounds} rounds x {args.seeds} seeds, config {args.config!r}, "
        f"{config.synth.pool_volumes} pool volumes"
    )
    for metric in METRICS:
        print(f"\nvalidation {metric}, mean ± std over seeds, by labeled crops:")
        for strategy, strategy_runs in by_strategy.items():
            labels, mean, std = mean_curve(strategy_runs, metric)
            points = "  ".join(
                f"{x:.0f}: {m:.3f}±{s:.3f}" for x, m, s in zip(labels, mean, std, strict=True)
            )
            print(f"  {strategy:>12}  {points}")

    labels, mean, _ = mean_curve(by_strategy["random"], "avF1")
    target, budget = float(mean[-1]), float(labels[-1])
    print(f"\nrandom's final avF1 {target:.3f} with {budget:.0f} labeled crops")
    fractions = {}
    for strategy, strategy_runs in by_strategy.items():
        if strategy == "random":
            continue
        s_labels, s_mean, _ = mean_curve(strategy_runs, "avF1")
        needed = labels_to_reach(s_labels, s_mean, target)
        fractions[strategy] = None if needed is None else needed / budget
        shown = "not reached" if needed is None else f"{needed:.1f} crops = {needed / budget:.2f}"
        print(f"  {strategy:>12} reaches it with {shown}")
    reached = {k: v for k, v in fractions.items() if v is not None}
    if reached:
        best = min(reached, key=lambda k: reached[k])
        print(
            f"best: {best}, {reached[best]:.2f} of random's labels "
            f"(goal <= {GOAL}: {'met' if reached[best] <= GOAL else 'NOT met'}; "
            f"ratio to goal {reached[best] / GOAL:.2f})"
        )
    else:
        print(f"no strategy reached random's final avF1 (goal <= {GOAL}: NOT met)")
    print("\ncorrection effort (fraction of shown voxels repainted in pre-annotations):")
    for strategy, strategy_runs in by_strategy.items():
        effort = correction(strategy_runs)
        print(f"  {strategy:>12}  {'n/a' if effort is None else f'{effort:.3f}'}")
    print(f"\ncurves: {plot}\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
