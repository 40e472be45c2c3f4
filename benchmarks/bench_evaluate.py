"""Time ``evaluate_instances(..., fisbe=True)`` on a FISBe-sized synthetic volume.

A 400 x 700 x 700 volume holds 10 ground-truth neurons: long, thin random-walk tubes (radius
1.5 to 2.5 voxels, one side branch each) that cross each other, so the GT has overlap rows.
The prediction perturbs every neuron (path shifted by one voxel, radius changed), splits one
neuron in two, merges two others, and adds 20 specks under 800 voxels (FISBe removes them).
Target: 60 s on 2 cores.

Run: .venv/bin/python benchmarks/bench_evaluate.py
"""

from __future__ import annotations

import resource
import time

import numpy as np

from activeseg.core.instances import Instances
from activeseg.core.metrics import evaluate_instances

SHAPE = (400, 700, 700)
N_NEURONS = 10
TARGET_S = 60.0


def random_walk(rng: np.random.Generator, steps: int) -> np.ndarray:
    """Return (steps, 3) float positions of a persistent random walk inside the volume."""
    position = rng.uniform([50, 100, 100], [350, 600, 600])
    direction = rng.normal(size=3)
    path = np.empty((steps, 3))
    for step in range(steps):
        direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.15, 3)
        direction /= np.linalg.norm(direction)
        outside = (position + 5 * direction < 2) | (position + 5 * direction > np.array(SHAPE) - 3)
        direction[outside] *= -1
        position = position + direction
        path[step] = position
    return path


def tube_voxels(path: np.ndarray, radius: float) -> np.ndarray:
    """Return (V, 3) int64 unique voxels within ``radius`` of the path points."""
    r = int(np.ceil(radius))
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    ball = grid[(grid**2).sum(1) <= radius**2]
    centres = np.round(path).astype(np.int64)
    voxels = (centres[:, None, :] + ball[None, :, :]).reshape(-1, 3)
    voxels = voxels[np.all((voxels >= 0) & (voxels < np.array(SHAPE)), axis=1)]
    return np.unique(voxels, axis=0)


def neuron_paths(rng: np.random.Generator) -> list[np.ndarray]:
    """Return one (L, 3) path per neuron: a long trunk and a side branch."""
    paths = []
    for _ in range(N_NEURONS):
        trunk = random_walk(rng, int(rng.integers(1500, 3000)))
        start = trunk[int(rng.integers(200, len(trunk) - 200))]
        branch = random_walk(rng, 600)
        branch += start - branch[0]
        paths.append(np.concatenate([trunk, branch]).clip(0, np.array(SHAPE) - 1))
    return paths


def paint(pieces: list[np.ndarray]) -> Instances:
    """Return instances with piece k as id k + 1; shared voxels go to the overlap rows."""
    labels = np.zeros(SHAPE, np.uint32)
    rows = []
    for k, voxels in enumerate(pieces):
        z, y, x = voxels.T
        taken = labels[z, y, x] > 0
        rows.append(np.column_stack([voxels[taken], np.full(taken.sum(), k + 1)]))
        labels[z[~taken], y[~taken], x[~taken]] = k + 1
    return Instances(labels, np.concatenate(rows).astype(np.int64))


def prediction_pieces(rng: np.random.Generator, paths: list[np.ndarray]) -> list[np.ndarray]:
    """Return predicted voxel sets: perturbed neurons, one split, one merge, small specks."""
    shifted = [path + rng.integers(-1, 2, 3) for path in paths]
    tubes = [tube_voxels(p, rng.uniform(1.5, 2.5)) for p in shifted]
    half = len(shifted[0]) // 2
    split = [tube_voxels(shifted[0][:half], 2.0), tube_voxels(shifted[0][half:], 2.0)]
    merged = [np.concatenate([tubes[1], tubes[2]])]
    specks = [tube_voxels(random_walk(rng, 20), 1.5) for _ in range(20)]
    return split + merged + tubes[3:] + specks


def main() -> None:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    paths = neuron_paths(rng)
    gt = paint([tube_voxels(p, rng.uniform(1.5, 2.5)) for p in paths])
    pred = Instances(paint(prediction_pieces(rng, paths)).labels, np.zeros((0, 4), np.int64))
    fg = int((gt.labels > 0).sum())
    print(f"volume {SHAPE}, built in {time.perf_counter() - start:.1f} s")
    print(f"GT: {len(gt.ids())} neurons, {fg} foreground voxels, {len(gt.overlaps)} overlap rows")
    print(f"prediction: {len(pred.ids())} instances (1 split, 1 merge, 20 specks < 800 voxels)")
    before_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    scores = evaluate_instances(pred, gt, fisbe=True)
    elapsed = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(", ".join(f"{key} {value:.3f}" for key, value in scores.items()))
    print(f"evaluate_instances(fisbe=True): {elapsed:.1f} s = {elapsed / TARGET_S:.2f} x target")
    print(
        f"peak RSS: {before_gib:.2f} GiB before evaluating (the two volumes), {peak_gib:.2f} after"
    )


if __name__ == "__main__":
    main()
