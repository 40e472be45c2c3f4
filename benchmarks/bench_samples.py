"""Cost of S prediction samples of one crop, as ratios to one deterministic pass.

Goal: M-heads (M = 8) at most 1.3x a single pass; ensemble (K = 4) and MC dropout (K = 8) are
reported and expected near K x. Runs the demo U-Net on a (32, 128, 128) crop of 3 channels.

    .venv/bin/python benchmarks/bench_samples.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from activeseg.config import load_config
from activeseg.core.models.probabilistic import ProbabilisticModel

CROP = (32, 128, 128)
VARIANTS = (("single", 1), ("mheads", 8), ("ensemble", 4), ("dropout", 8))


def best_seconds(models: dict[str, ProbabilisticModel], x: torch.Tensor, repeats: int) -> dict:
    """Return the fastest wall time of model.sample(x) per model over repeats.

    The models take turns within each repeat and the minimum is kept, so load from other
    processes on a shared machine inflates the ratios as little as possible.
    """
    best = {name: float("inf") for name in models}
    for _ in range(repeats + 1):  # the first round warms up
        for name, model in models.items():
            started = time.perf_counter()
            model.sample(x, seed=0)
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config("demo").model.with_channels(3)
    x = torch.rand(1, 3, *CROP)
    voxels = x[0, 0].numel()
    print(
        f"crop {CROP} x 3 ch, widths {list(config.widths)}, "
        f"{args.threads} threads, best of {args.repeats}"
    )
    models = {
        kind: ProbabilisticModel(config.model_copy(update={"kind": kind, "samples": samples}))
        for kind, samples in VARIANTS
    }
    best = best_seconds(models, x, args.repeats)
    for kind, model in models.items():
        seconds = best[kind]
        rate = voxels / seconds / 1e6
        print(
            f"{kind:9s} S={model.n_samples}: {seconds:6.2f} s  {seconds / best['single']:5.2f}x"
            f" single  {rate:5.2f} Mvoxel/s  {rate * model.n_samples:5.2f} Mvoxel-samples/s"
        )


if __name__ == "__main__":
    main()
