"""Peak memory of predicting a volume to zarr, and how it grows with the volume.

Goal: a (3, 64, 512, 512) uint16 volume peaks at <= 2 GiB RSS, and twice the volume (z = 128)
at <= 10% more. Each size runs in a fresh subprocess that reports its own max RSS. The model
is the demo config's M-heads U-Net (8 heads), randomly initialized: weights do not change the
memory or the time. Output layout "samples" (float16 per sample).

    .venv/bin/python benchmarks/bench_predict_memory.py [--depth 64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

GIB = 2**30


def write_raw(path: Path, depth: int) -> None:
    """Write a (3, depth, 512, 512) uint16 noise volume to a zarr array, slab by slab."""
    rng = np.random.default_rng(0)
    raw = zarr.create_array(
        path, shape=(3, depth, 512, 512), dtype=np.uint16, chunks=(3, 32, 128, 128)
    )
    for z in range(0, depth, 32):
        raw[:, z : z + 32] = rng.integers(80, 400, (3, 32, 512, 512), dtype=np.uint16)


def child(raw_path: Path, out_path: Path) -> None:
    """Predict raw_path to out_path and print {"seconds", "max_rss"} as JSON."""
    import torch

    from activeseg.config import load_config
    from activeseg.core.models.checkpoint import TrainedModel
    from activeseg.core.models.normalization import Normalization
    from activeseg.core.models.probabilistic import ProbabilisticModel
    from activeseg.core.tiling import plan_tiling, predict_to_zarr

    demo = load_config("demo")
    config = demo.model_copy(update={"model": demo.model.with_channels(3)})
    torch.manual_seed(0)
    trained = TrainedModel(
        ProbabilisticModel(config.model).eval(), config, Normalization((80.0,) * 3, (400.0,) * 3)
    )
    raw = zarr.open_array(raw_path, mode="r")
    started = time.perf_counter()
    layout = predict_to_zarr(trained, raw, out_path, layout="samples")
    seconds = time.perf_counter() - started
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tiling = plan_tiling(trained, (raw.shape[1], raw.shape[2], raw.shape[3]))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "max_rss": max_rss,
                "layout": layout,
                "core": tiling.core,
                "margin": tiling.margin,
            }
        )
    )


def run_size(workdir: Path, depth: int) -> dict[str, float]:
    """Return the child's report for a (3, depth, 512, 512) volume."""
    raw_path, out_path = workdir / f"raw{depth}.zarr", workdir / f"pred{depth}.zarr"
    write_raw(raw_path, depth)
    command = [sys.executable, __file__, "--child", str(raw_path), str(out_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    report: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64, help="z of the smaller volume")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the outputs")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        reports = {depth: run_size(workdir, depth) for depth in (args.depth, 2 * args.depth)}
    small, large = reports[args.depth], reports[2 * args.depth]
    print(f"tile core {small['core']}, margin {small['margin']}, layout {small['layout']}")
    for depth, report in reports.items():
        voxels = depth * 512 * 512
        print(
            f"(3, {depth}, 512, 512): peak RSS {report['max_rss'] / GIB:.2f} GiB, "
            f"{report['seconds']:.0f} s, {voxels / report['seconds'] / 1e6:.2f} Mvoxel/s"
        )
    growth = large["max_rss"] / small["max_rss"]
    print(
        f"peak RSS ratio 2x volume / 1x volume: {growth:.3f}  (goal <= 1.10); "
        f"1x peak {small['max_rss'] / GIB:.2f} GiB (goal <= 2 GiB)"
    )


if __name__ == "__main__":
    main()
