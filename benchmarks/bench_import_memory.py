"""Peak memory of `activeseg import` of a FISBe-size volume, at full and at half size.

Goal (the real-pools issue): peak RSS <= 1 GiB for a (3, 400, 700, 700) uint16 FISBe volume
with its neurons, and the same at half the depth (flat in the volume's size). Each import runs
the real command in a fresh subprocess that reports its own max RSS; the volume is written
slab by slab beforehand (tubes that wander through z, 10 neurons, two of them crossing).

    .venv/bin/python benchmarks/bench_import_memory.py [--depth 400] [--size 700] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

GIB = 2**30
GOAL_BYTES = 1 * GIB
NEURONS = 10
SLAB = 20


def write_fisbe(path: Path, depth: int, size: int, seed: int = 0) -> None:
    """Write a FISBe-layout zarr v2 group of (3, depth, size, size) raw and NEURONS neurons."""
    rng = np.random.default_rng(seed)
    group = zarr.open_group(path, mode="w", zarr_format=2)
    chunks = (1, 32, 128, 128)
    raw = group.create_array("volumes/raw", shape=(3, depth, size, size), dtype=np.uint16,
                             chunks=chunks)  # fmt: skip
    gt = group.create_array("volumes/gt_instances", shape=(NEURONS, depth, size, size),
                            dtype=np.uint8, chunks=chunks)  # fmt: skip
    start = rng.uniform(0.2 * size, 0.8 * size, (NEURONS, 2))
    drift = rng.uniform(-0.6, 0.6, (NEURONS, 2))
    colours = rng.uniform(200, 900, (NEURONS, 3))
    yy, xx = np.mgrid[:size, :size]
    for z0 in range(0, depth, SLAB):
        z1 = min(z0 + SLAB, depth)
        slab = rng.poisson(60, (3, z1 - z0, size, size)).astype(np.float32)
        masks = np.zeros((NEURONS, z1 - z0, size, size), np.uint8)
        for z in range(z0, z1):
            for k in range(NEURONS):
                cy, cx = start[k] + drift[k] * z
                disk = (yy - cy % size) ** 2 + (xx - cx % size) ** 2 <= 9
                masks[k, z - z0][disk] = k + 1
                slab[:, z - z0][:, disk] += colours[k][:, None]
        raw[:, z0:z1] = np.clip(slab, 0, 65535).astype(np.uint16)
        gt[:, z0:z1] = masks


def child(project: Path, volume: Path) -> None:
    """Import volume into project through the CLI; print {"seconds", "max_rss", "crops"}."""
    from activeseg.cli import app

    started = time.perf_counter()
    app(["import", str(volume), "--format", "fisbe", "-p", str(project), "--json"],
        standalone_mode=False)  # fmt: skip
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "max_rss": rss}), file=sys.stderr)


def measure(work: Path, depth: int, size: int) -> dict[str, float]:
    """Return the import's time, peak RSS and voxel rate for one volume depth."""
    volume = work / f"fisbe-{depth}.zarr"
    if not volume.exists():
        write_fisbe(volume, depth, size)
    project = work / f"project-{depth}"
    shutil.rmtree(project, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "activeseg", "init", str(project), "--config",
                    "flylight"], check=True, capture_output=True)  # fmt: skip
    done = subprocess.run([sys.executable, __file__, "--child", str(project), str(volume)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    result = json.loads(done.stderr.strip().splitlines()[-1])
    result["voxels_per_s"] = depth * size * size / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=400)
    parser.add_argument("--size", type=int, default=700)
    parser.add_argument("--keep", type=Path, help="Keep the volumes and projects here.")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = {d: measure(work, d, args.size) for d in (args.depth // 2, args.depth)}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    half, full = rows[args.depth // 2], rows[args.depth]
    for depth, row in rows.items():
        print(f"import (3, {depth}, {args.size}, {args.size}): {row['seconds']:.1f} s, "
              f"{row['voxels_per_s'] / 1e6:.1f} Mvoxel/s, peak RSS {row['max_rss'] / GIB:.2f} GiB "
              f"= {row['max_rss'] / GOAL_BYTES:.2f} x the 1 GiB goal")  # fmt: skip
    print(f"full / half peak RSS: {full['max_rss'] / half['max_rss']:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
