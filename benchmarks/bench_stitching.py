"""Blockwise clustering with stitching against one pass, on an oracle embedding.

The embedding is an *oracle*: every true neuron of a synthetic MCFO volume
(activeseg.data.synthetic.generate_mcfo) gets a random centre in an 8-D embedding, each voxel
its neuron's centre plus Gaussian noise (--noise) plus a slow drift along x common to all
neurons (--drift, as a trained model's embedding wanders along a neuron); the foreground is
0.9 on neurons and 0.05 elsewhere. No model is trained: what is measured is clustering and
stitching alone. Clustering uses the default cluster config (Gaussian mean shift, bandwidth
0.5, threshold 0.8, min_size 20).

1. Small volumes (--small-volumes of 32 x 128 x 128, 8 neurons) that one pass clusters: the
   stitched result with blocks of 32 x 64 x 64 (margin 8 x 16 x 16, four blocks) against one
   pass. Goal: F1@0.5 within 0.02 of one pass.
2. A large volume of 4 x 4 tiles, each a 32 x 96 x 96 synthetic volume of 8 neurons inside a
   128 x 128 tile (16 background voxels around it): 128 neurons, far apart between tiles. Only
   four centre sets exist: tiles two apart share one, so every neuron has look-alikes (same
   centre) 256 voxels away. One pass merges them; blockwise clustering with the default
   blocks (256 x 256 in y, x) must not. Goal: 0 instances spanning two tiles.

    .venv/bin/python benchmarks/bench_stitching.py [--small-volumes 5] [--tiles 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import numpy.typing as npt

from activeseg.config import ClusterConfig
from activeseg.core.cluster import segment
from activeseg.core.instances import Instances
from activeseg.core.metrics import score_volume, summarize, threshold_table
from activeseg.core.stitching import ClusterOptions, StitchOptions, segment_volume
from activeseg.data.synthetic import generate_mcfo

DIMS = 8
SMALL_SHAPE = (32, 128, 128)
SMALL_BLOCKS = StitchOptions(block=(32, 64, 64), margin=(8, 16, 16))
TILE, TILE_INNER = 128, 96
CENTRE_SETS = 4
F1_GOAL = 0.02


def oracle(
    labels: npt.NDArray[np.uint32],
    centres: npt.NDArray[np.float64],
    rng: np.random.Generator,
    noise: float,
    drift: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return foreground (Z, Y, X) and embedding (DIMS, Z, Y, X) of a label image whose id k
    sits at centres[k] (row 0 unused)."""
    foreground = np.where(labels > 0, 0.9, 0.05).astype(np.float32)
    embedding = rng.normal(0, noise, (DIMS, *labels.shape)).astype(np.float32)
    embedding += np.moveaxis(centres[labels], -1, 0).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, DIMS)
    x = np.arange(labels.shape[2]) / labels.shape[2]
    embedding += (drift * np.sin(2 * np.pi * x[None, :] + phase[:, None]))[:, None, None, :]
    return foreground, embedding


def random_centres(count: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Return (count + 1, DIMS) centres, row 0 (background) at the origin."""
    return np.vstack([np.zeros(DIMS), rng.normal(0, 2.0, (count, DIMS))])


def f1_at_half(pred: npt.NDArray[np.uint32], truth: Instances) -> dict[str, float]:
    """Return F1@0.5, avF1, false merges and instance counts of pred against truth."""
    scores = score_volume(Instances.from_labels(pred), truth)
    summary = summarize([scores])
    return {
        "F1@0.5": threshold_table([scores])[0]["f1"],
        "avF1": summary["avF1"],
        "FM": summary["FM"],
        "n_pred": summary["n_pred"],
        "n_gt": summary["n_gt"],
    }


def small_volumes(count: int, noise: float, drift: float) -> None:
    """Print one pass against stitched on small volumes, and the F1 difference."""
    options = ClusterConfig().options()
    rows = []
    for seed in range(count):
        volume = generate_mcfo(SMALL_SHAPE, 8, seed=300 + seed)
        rng = np.random.default_rng(seed)
        fg, emb = oracle(volume.instances.labels, random_centres(8, rng), rng, noise, drift)
        one = f1_at_half(segment(fg, emb, **options), volume.instances)
        stitched = segment_volume(fg, emb, ClusterOptions(**options), SMALL_BLOCKS)
        rows.append((one, f1_at_half(stitched, volume.instances)))
    one_f1 = float(np.mean([a["F1@0.5"] for a, _ in rows]))
    stitched_f1 = float(np.mean([b["F1@0.5"] for _, b in rows]))
    print(
        f"1. {count} volumes {SMALL_SHAPE}, 8 neurons, oracle embedding (noise {noise}, "
        f"drift {drift}); stitched blocks {SMALL_BLOCKS.block} margin {SMALL_BLOCKS.margin}"
    )
    for name, column in (("one pass", 0), ("stitched", 1)):
        mean = {k: float(np.mean([row[column][k] for row in rows])) for k in rows[0][0]}
        print(
            f"   {name:9s} F1@0.5 {mean['F1@0.5']:.3f}  avF1 {mean['avF1']:.3f}  "
            f"FM {mean['FM']:.1f}  instances {mean['n_pred']:.1f} / {mean['n_gt']:.1f}"
        )
    gap = abs(stitched_f1 - one_f1)
    print(
        f"   |F1@0.5 stitched - one pass| = {gap:.3f} (goal <= {F1_GOAL}: "
        f"{gap / F1_GOAL:.2f} x the allowance)"
    )


def tiled_volume(tiles: int, noise: float, drift: float) -> None:
    """Print one pass against stitched on a large volume of far-apart look-alikes."""
    depth, size = SMALL_SHAPE[0], tiles * TILE
    labels = np.zeros((depth, size, size), np.uint32)
    tile_of = [0]
    rng = np.random.default_rng(7)
    sets = [random_centres(8, rng)[1:] for _ in range(CENTRE_SETS)]
    centres = [np.zeros(DIMS)]
    pad = (TILE - TILE_INNER) // 2
    for i in range(tiles):
        for j in range(tiles):
            volume = generate_mcfo((depth, TILE_INNER, TILE_INNER), 8, seed=500 + i * tiles + j)
            ids = volume.instances.ids()
            local = volume.instances.labels
            shifted = np.where(local > 0, local + len(centres) - 1, 0).astype(np.uint32)
            y, x = i * TILE + pad, j * TILE + pad
            labels[:, y : y + TILE_INNER, x : x + TILE_INNER] = shifted
            chosen = sets[(i % 2) * 2 + (j % 2)]  # tiles two apart share a centre set
            centres.extend(chosen[: len(ids)])
            tile_of.extend([i * tiles + j] * len(ids))
    truth = Instances.from_labels(labels)
    fg, emb = oracle(labels, np.array(centres), rng, noise, drift)
    options = ClusterConfig().options()
    started = time.perf_counter()
    one = segment(fg, emb, **options)
    one_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stitched = segment_volume(fg, emb, ClusterOptions(**options), StitchOptions())
    stitched_seconds = time.perf_counter() - started
    print(
        f"2. {tiles} x {tiles} tiles: volume {labels.shape}, {len(centres) - 1} neurons, "
        f"{CENTRE_SETS} centre sets (look-alikes {2 * TILE} voxels apart); default blocks "
        f"{StitchOptions().block} margin {StitchOptions().margin}"
    )
    for name, pred, seconds in (
        ("one pass", one, one_seconds),
        ("stitched", stitched, stitched_seconds),
    ):
        scores = f1_at_half(pred, truth)
        spanning = spanning_instances(pred, labels, np.array(tile_of))
        print(
            f"   {name:9s} F1@0.5 {scores['F1@0.5']:.3f}  avF1 {scores['avF1']:.3f}  "
            f"FM {scores['FM']:.0f}  instances {scores['n_pred']:.0f} / {scores['n_gt']:.0f}  "
            f"instances spanning two tiles {spanning} (goal 0)  {seconds:.1f} s"
        )


def spanning_instances(
    pred: npt.NDArray[np.uint32], labels: npt.NDArray[np.uint32], tile_of: npt.NDArray[np.int64]
) -> int:
    """Return how many predicted instances hold >= 20 voxels of neurons of two or more tiles."""
    on = (pred > 0) & (labels > 0)
    pairs, counts = np.unique(
        np.stack([pred[on].astype(np.int64), tile_of[labels[on]]]), axis=1, return_counts=True
    )
    big = pairs[0][counts >= 20]
    _, per_instance = np.unique(big, return_counts=True)
    return int((per_instance >= 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-volumes", type=int, default=5)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--drift", type=float, default=0.2)
    args = parser.parse_args()
    small_volumes(args.small_volumes, args.noise, args.drift)
    tiled_volume(args.tiles, args.noise, args.drift)


if __name__ == "__main__":
    main()
