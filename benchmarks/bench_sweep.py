"""Compare bench_quality settings over several seeds: train them side by side on one GPU, then
score every checkpoint.

One training run cannot rank settings here: seeds scatter F1@0.5 by +-0.1 (BENCHMARKS.md,
session 6). A GPU runs a dozen 10-minute CPU trainings at once in ~7 minutes:

    python benchmarks/bench_sweep.py train OUT --run base --run mask=loss.w_mask=0.3 \\
        --seeds 0 1 2 [--steps N] [--budget 480]
    .venv/bin/python benchmarks/bench_sweep.py score OUT [--workers 2] [--test-volumes 15]

train: every (run, seed) trains in its own process (one CPU thread each) with bench_quality's
defaults plus the run's SECTION.FIELD=VALUE settings (comma-separated after NAME=) and
train.seed=SEED. All first train a 150-step probe at once; then each trains --steps steps
(default: its own train.steps=N setting, else the CPU budget's), or fewer if the slowest probe
says they would not end within --budget seconds of the start. Checkpoints go to
OUT/NAME-sSEED, and all of them into as few OUT/pack-K.tar of <= 15 MiB as they fit (a lent
machine copies back only a few files, none over 16 MiB: keep only these in $OUT).

score: scores every checkpoint folder in OUT with bench_quality (settings chosen on its
validation volumes, --test-volumes test volumes), --workers at a time on one thread each, and
prints each run's mean, min and max F1@0.5 and avF1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import tarfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Barrier
from pathlib import Path

import torch
from bench_quality import (
    Quality,
    arguments,
    bench_config,
    evaluate,
    training_crops,
)

from activeseg.core.models.checkpoint import load_model
from activeseg.core.training import train_model

PROBE_STEPS = 150
# Steps whose time the probe measures start after this one (the first ones warm the GPU up).
PROBE_FROM = 50
BARRIER_SECONDS = 600
# A lent machine copies back only a few files from $OUT, none over 16 MiB.
PACK_BYTES = 15 * 2**20


def bench_args(settings: list[str], steps: int | None) -> argparse.Namespace:
    """Return bench_quality's command line with settings (SECTION.FIELD=VALUE) and steps."""
    length = ["--steps", str(steps)] if steps else []
    return arguments().parse_args([*length, "--set", *settings, "train.threads=1"])


def train_one(
    name: str,
    settings: list[str],
    index: int,
    rates: SynchronizedArray[float],
    barrier: Barrier,
    steps: int | None,
    deadline: float,
    out: Path,
) -> None:
    """Train one (run, seed) after the shared probe. A failure is logged, not raised, and the
    process still meets the others at both barriers (as an infinitely fast prober)."""
    log = out / f"{name}.json"
    met = 0
    try:
        config = bench_config(bench_args(settings, PROBE_STEPS))
        crops = training_crops(config)
        barrier.wait(BARRIER_SECONDS)
        met += 1
        marks: dict[int, float] = {}

        def mark(step: int, total: int, loss: float) -> None:
            if step in (PROBE_FROM, PROBE_STEPS):
                marks[step] = time.perf_counter()

        train_model(crops, config, out / "probes" / name, progress=mark)
        rates[index] = (PROBE_STEPS - PROBE_FROM) / (marks[PROBE_STEPS] - marks[PROBE_FROM])
        barrier.wait(BARRIER_SECONDS)
        met += 1
        slowest = min(rates[:])
        wanted = steps or bench_config(bench_args(settings, None)).train.steps
        fitting = int(slowest * (deadline - time.time()) * 0.95) // 100 * 100
        if fitting < PROBE_STEPS:
            raise RuntimeError(f"at {slowest:.1f} steps/s only {fitting} steps fit --budget")
        config = bench_config(bench_args(settings, min(wanted, fitting)))
        result = train_model(crops, config, out / name)
        record: dict[str, object] = {
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "precision": result.precision,
            "probe_steps_per_s": round(rates[index], 2),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
    except Exception as error:  # reported in the log; the sweep goes on
        record = {"error": repr(error)}
        rates[index] = float("inf")
        for _ in range(met, 2):
            barrier.wait(BARRIER_SECONDS)
    log.write_text(json.dumps(record))


def train(args: argparse.Namespace) -> None:
    deadline = time.time() + args.budget
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs = dict(parse_run(run) for run in args.run)
    jobs = [
        (f"{name}-s{seed}", [*sets, f"train.seed={seed}"])
        for name, sets in runs.items()
        for seed in args.seeds
    ]
    context = mp.get_context("spawn")
    rates = context.Array("d", len(jobs))
    barrier = context.Barrier(len(jobs))
    processes = [
        context.Process(
            target=train_one,
            args=(name, sets, i, rates, barrier, args.steps, deadline, out),
        )
        for i, (name, sets) in enumerate(jobs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    pack(out, [job for job, _ in jobs if (out / job / "weights.pt").exists()])
    for job, _ in jobs:
        print(job, (out / f"{job}.json").read_text() if (out / f"{job}.json").exists() else "-")


def pack(out: Path, folders: list[str]) -> None:
    """Tar the checkpoint folders into as few OUT/pack-K.tar files of <= PACK_BYTES as fit."""
    packs: list[list[str]] = []
    size = PACK_BYTES
    for folder in folders:
        folder_bytes = sum(f.stat().st_size for f in (out / folder).iterdir())
        if size + folder_bytes > PACK_BYTES:
            packs.append([])
            size = 0
        packs[-1].append(folder)
        size += folder_bytes
    for k, names in enumerate(packs):
        with tarfile.open(out / f"pack-{k}.tar", "w") as tar:
            for name in names:
                tar.add(out / name, arcname=name)


def parse_run(text: str) -> tuple[str, list[str]]:
    """Return (name, settings) of NAME[=SECTION.FIELD=VALUE,...]; a comma starts a new setting
    only before SECTION.FIELD=, so values may be YAML lists: model.widths=[16,32,64,128]."""
    name, _, settings = text.partition("=")
    return name, [s for s in re.split(r",(?=\w+\.\w+=)", settings) if s]


def score_one(folder: Path, test_volumes: int) -> tuple[str, Quality]:
    torch.set_num_threads(1)
    return folder.name, evaluate(load_model(folder), test_volumes)


def score(args: argparse.Namespace) -> None:
    folders = sorted(p.parent for p in Path(args.out).glob("*/weights.pt"))
    by_run: dict[str, list[Quality]] = defaultdict(list)
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(score_one, folder, args.test_volumes) for folder in folders]
        for future in futures:
            name, quality = future.result()
            print(name, json.dumps(asdict(quality)), flush=True)
            by_run[name.rpartition("-s")[0]].append(quality)
    print(f"{'run':<24} seeds  F1@0.5 mean [min, max]   avF1 mean [min, max]   true-fg  Dice")
    for run, qualities in by_run.items():
        f1 = [q.f1 for q in qualities]
        av = [q.av_f1 for q in qualities]
        true_fg = statistics.mean(q.true_foreground_f1 for q in qualities)
        dice = statistics.mean(q.dice for q in qualities)
        print(
            f"{run:<24} {len(qualities):>5}  {statistics.mean(f1):.3f} [{min(f1):.3f}, "
            f"{max(f1):.3f}]   {statistics.mean(av):.3f} [{min(av):.3f}, {max(av):.3f}]   "
            f"{true_fg:.3f}    {dice:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train", help="train every run and seed at once")
    trainer.add_argument("out", type=Path)
    trainer.add_argument(
        "--run", action="append", required=True, metavar="NAME[=SECTION.FIELD=VALUE,...]"
    )
    trainer.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    trainer.add_argument("--steps", type=int, help="default: what fits the CPU budget")
    trainer.add_argument("--budget", type=float, default=480, help="seconds for all training")
    scorer = commands.add_parser("score", help="score every checkpoint in OUT")
    scorer.add_argument("out", type=Path)
    scorer.add_argument("--workers", type=int, default=2)
    scorer.add_argument("--test-volumes", type=int, default=15)
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    else:
        score(args)


if __name__ == "__main__":
    main()
