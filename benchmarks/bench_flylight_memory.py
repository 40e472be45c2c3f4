"""Peak memory and speed of `activeseg predict` and `evaluate --fisbe --uncertainty` on a
FISBe-size synthetic volume, at full and at half depth.

Goals (issue 25): peak RSS <= 4 GiB for each command on a (3, 400, 700, 700) volume with >= 40
neurons, and at half the depth within 10 % of that (full / half <= 1.10: flat in size);
prediction throughput >= 0.75 x that of the bare forward pass of the same model over the same
tiles. Run reduced on a small CPU with --depth/--size (e.g. --depth 64 --size 256).

Setup (not measured): a FISBe-layout volume is written slab by slab (tubes wandering through z,
--neurons of them), a flylight-config project is made, the full volume is imported with its
labels and a model trained for --train-steps steps (a short training: the model is poor, but
its cost per voxel is the real one; its foreground is clustered above --threshold 0.6, so that
about a tenth of the voxels are clustered, as many as a good model's). Measured, each in a
fresh subprocess reporting its own max RSS: ``activeseg predict VOLUME --out pred.zarr``
(samples or moments + uncertainty map + consensus instances clustered blockwise) and
``activeseg evaluate pred.zarr VOLUME --fisbe --uncertainty``; and, for the throughput ratio,
the bare forward pass (model.sample on every tile, reading excluded) in another subprocess.

    .venv/bin/python benchmarks/bench_flylight_memory.py [--depth 400] [--size 700]
        [--neurons 40] [--train-steps 20] [--threshold 0.6] [--keep DIR]
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
import yaml
import zarr

GIB = 2**30
GOAL_BYTES = 4 * GIB
FLAT_GOAL = 1.10
THROUGHPUT_GOAL = 0.75
SLAB = 16
RADIUS = 3


def write_fisbe(path: Path, depth: int, size: int, neurons: int, seed: int = 0) -> None:
    """Write a FISBe zarr v2 group: (3, depth, size, size) uint16 raw and one uint8 channel per
    neuron, slab by slab and neuron by neuron (memory holds one slab of raw)."""
    rng = np.random.default_rng(seed)
    group = zarr.open_group(path, mode="w", zarr_format=2)
    chunks = (1, 32, 128, 128)
    raw = group.create_array(
        "volumes/raw", shape=(3, depth, size, size), dtype=np.uint16, chunks=chunks
    )
    gt = group.create_array(
        "volumes/gt_instances", shape=(neurons, depth, size, size), dtype=np.uint8, chunks=chunks
    )
    start = rng.uniform(0.1 * size, 0.9 * size, (neurons, 2))
    drift = rng.uniform(-0.5, 0.5, (neurons, 2))
    colours = rng.uniform(300, 900, (neurons, 3))
    window = np.arange(-RADIUS, RADIUS + 1)
    disk = window[:, None] ** 2 + window[None, :] ** 2 <= RADIUS**2
    for z0 in range(0, depth, SLAB):
        z1 = min(z0 + SLAB, depth)
        slab = rng.poisson(60, (3, z1 - z0, size, size)).astype(np.float32)
        for k in range(neurons):
            mask = np.zeros((z1 - z0, size, size), bool)
            for z in range(z0, z1):
                cy, cx = ((start[k] + drift[k] * z) % (size - 2 * RADIUS - 2)).astype(int) + 1
                mask[z - z0, cy : cy + 2 * RADIUS + 1, cx : cx + 2 * RADIUS + 1] |= disk
            slab[:, mask] += colours[k][:, None]
            gt[k, z0:z1] = mask.astype(np.uint8) * (k + 1)
        raw[:, z0:z1] = np.clip(slab, 0, 65535).astype(np.uint16)


def cli(*args: str) -> dict[str, object]:
    """Run an activeseg command in this process and return its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "activeseg", *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else {}


def setup(work: Path, volume: Path, steps: int, threshold: float) -> Path:
    """Return a flylight project with a model trained for steps steps on volume's labels,
    clustering foreground above threshold."""
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    cli("init", str(project), "--config", "flylight")
    config_file = project / "activeseg.yaml"
    config = yaml.safe_load(config_file.read_text())
    config.setdefault("train", {})["steps"] = steps
    # The short training's foreground probability is ~0.66 on neurons and ~0.50 elsewhere:
    # clustered at the default 0.8 almost nothing would be, and clustering would cost nothing.
    config.setdefault("cluster", {})["foreground_threshold"] = threshold
    config_file.write_text(yaml.safe_dump(config))
    cli("import", str(volume), "--format", "fisbe", "--as-labels", "-p", str(project), "--json")
    cli("train", "-p", str(project), "--json")
    return project


def child(arguments: list[str]) -> None:
    """Run one command (activeseg arguments, or --forward PROJECT VOLUME) in this process and
    print {"seconds", "max_rss", "answer"} as the last line of stderr."""
    started = time.perf_counter()
    if arguments[0] == "--forward":
        answer: object = forward_seconds(Path(arguments[1]), arguments[2])
    else:
        from activeseg.cli import app

        answer = app(arguments, standalone_mode=False)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "max_rss": rss, "answer": answer}), file=sys.stderr)


def forward_seconds(project_dir: Path, volume: str) -> float:
    """Return the seconds the model's forward passes take over predict's tiles of volume."""
    import torch

    from activeseg.core.models.checkpoint import load_model
    from activeseg.core.tiling import _read_normalized, _round_up, calibrate, plan_tiling
    from activeseg.workflows.fit import latest_model_path
    from activeseg.workflows.predict import open_raw
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    trained = load_model(latest_model_path(project))
    raw = open_raw(project, volume)
    shape = tuple(raw.shape[1:])
    tiling = plan_tiling(trained, shape)
    torch.set_num_threads(trained.config.train.threads)
    calibrate(trained, raw)
    total = 0.0
    for box in tiling.boxes(shape):
        size = tuple(b.stop - b.start for b in box)
        padded = _round_up(size, trained.model.divisor())
        start = [b.start - m for b, m in zip(box, tiling.margin, strict=True)]
        stop = [s + p + 2 * m for s, p, m in zip(start, padded, tiling.margin, strict=True)]
        batch = torch.from_numpy(_read_normalized(trained, raw, start, stop))[None]
        keep = tuple(slice(m, m + n) for m, n in zip(tiling.margin, size, strict=True))
        began = time.perf_counter()
        trained.model.sample(batch, keep=keep)  # type: ignore[arg-type]
        total += time.perf_counter() - began
    return total


def measure(*arguments: str) -> dict[str, float]:
    """Return the child's seconds, max RSS and answer for one command."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", *arguments],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stderr.strip().splitlines()[-1])
    return result


def run_depth(work: Path, project: Path, volume: Path) -> dict[str, dict[str, float]]:
    """Return the measurements of predict, evaluate and the bare forward pass on one volume."""
    pred = work / f"pred-{volume.stem}.zarr"
    predicted = measure("predict", str(volume), "--out", str(pred), "--force", "-p", str(project))
    evaluated = measure(
        "evaluate", str(pred), str(volume), "--fisbe", "--uncertainty", "--json", "-p", str(project)
    )
    forward = measure("--forward", str(project), str(volume))
    group = zarr.open_group(pred, mode="r")
    consensus = np.asarray(group["labels/consensus/0"][...])  # type: ignore[index]
    predicted["instances"] = float(len(np.unique(consensus)) - 1)
    predicted["foreground"] = float((consensus > 0).mean())
    predicted["layout"] = group.attrs["layout"]  # type: ignore[assignment]
    return {"predict": predicted, "evaluate": evaluated, "forward": forward}


def report(rows: dict[int, dict[str, dict[str, float]]], size: int, neurons: int) -> None:
    """Print every measurement with its ratio to the goals."""
    depths = sorted(rows)
    for depth in depths:
        voxels = depth * size * size
        row = rows[depth]
        print(f"(3, {depth}, {size}, {size}), {neurons} neurons:")
        for name in ("predict", "evaluate"):
            r = row[name]
            print(
                f"  {name:8s} {r['seconds']:7.1f} s  {voxels / r['seconds'] / 1e3:8.1f} kvoxel/s"
                f"  peak RSS {r['max_rss'] / GIB:.2f} GiB = {r['max_rss'] / GOAL_BYTES:.2f} x "
                f"the 4 GiB goal"
            )
        p, f = row["predict"], row["forward"]
        print(
            f"  predict: layout {p['layout']}, {p['instances']:.0f} instances, "
            f"{100 * p['foreground']:.1f} % of voxels in instances"
        )
        print(
            f"  bare forward pass over the same tiles {f['answer']:.1f} s (its process: peak "
            f"RSS {f['max_rss'] / GIB:.2f} GiB): predict throughput = "
            f"{f['answer'] / p['seconds']:.2f} x the forward pass (goal >= {THROUGHPUT_GOAL})"
        )
    if len(depths) == 2:
        half, full = rows[depths[0]], rows[depths[1]]
        for name in ("predict", "evaluate"):
            ratio = full[name]["max_rss"] / half[name]["max_rss"]
            print(f"{name} peak RSS full / half depth: {ratio:.3f} (goal <= {FLAT_GOAL})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=400)
    parser.add_argument("--size", type=int, default=700)
    parser.add_argument("--neurons", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.6, help="Foreground threshold.")
    parser.add_argument("--keep", type=Path, help="Keep the volumes and project here.")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-flylight-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        volumes = {}
        for depth in (args.depth // 2, args.depth):
            volumes[depth] = work / f"fisbe-{depth}.zarr"
            if not volumes[depth].exists():
                write_fisbe(volumes[depth], depth, args.size, args.neurons)
        project = setup(work, volumes[args.depth], args.train_steps, args.threshold)
        rows = {depth: run_depth(work, project, path) for depth, path in volumes.items()}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, args.size, args.neurons)


if __name__ == "__main__":
    main()
