"""What one label per voxel costs on data whose neurons overlap (the real-pools issue).

The model predicts one instance per voxel. This scores the ground truth's own one-label
projection (every overlap voxel keeps only its smallest id, as the label image stores it)
against the full, overlapping ground truth with the FISBe protocol: the best a one-label model
can reach. Run on the real FlyLight crop shipped with the tests and on synthetic MCFO volumes
(whose neurons cross).

    .venv/bin/python benchmarks/bench_overlap_cost.py [--synthetic 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from activeseg.core.instances import Instances
from activeseg.core.metrics import evaluate_instances
from activeseg.data.fisbe import read_fisbe
from activeseg.data.synthetic import generate_mcfo

CROP = (
    Path(__file__).resolve().parents[1] / "tests/data/flylight/JRC_SS05008-20160318_24_B2_crop.zarr"
)
METRICS = ("avF1", "C", "FS", "FM")


def projection_cost(truth: Instances) -> dict[str, float]:
    """Return FISBe metrics of the one-label projection of ``truth`` against ``truth``, and the
    share of neuron voxels that are overlaps."""
    projected = Instances(truth.labels, np.zeros((0, 4), np.int64))
    scores = evaluate_instances(projected, truth, fisbe=True)
    neuron_voxels = int((truth.labels > 0).sum()) + len(truth.overlaps)
    return {**{k: scores[k] for k in METRICS}, "overlap share": len(truth.overlaps) / neuron_voxels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=8, help="Synthetic volumes to score.")
    args = parser.parse_args()
    rows = {"FlyLight crop (real, 3 neurons)": projection_cost(read_fisbe(CROP).instances)}
    synthetic = [projection_cost(generate_mcfo((32, 128, 128), 8, seed).instances)
                 for seed in range(args.synthetic)]  # fmt: skip
    rows[f"synthetic 32x128x128, 8 neurons (mean of {args.synthetic})"] = {
        k: float(np.mean([r[k] for r in synthetic])) for k in synthetic[0]
    }
    print(f"{'data':48s} " + " ".join(f"{k:>8s}" for k in (*METRICS, "overlap share")))
    for name, row in rows.items():
        print(f"{name:48s} " + " ".join(f"{row[k]:8.3f}" for k in (*METRICS, "overlap share")))
    print("avF1 of a perfect one-label model as a ratio to a perfect overlapping one (1.0): "
          + ", ".join(f"{row['avF1']:.3f}" for row in rows.values()))  # fmt: skip


if __name__ == "__main__":
    main()
