"""Pool scoring throughput on Dask workers against one process, and the per-task overhead.

One synthetic pool (smoke model saved untrained: its cost is that of any checkpoint of the
architecture), copied once per variant, is scored by the real score stage
(``workflows.score.score_pool``: predict, cluster every sample, maps to zarr, ledger rows):

- ``serial``: in this process, torch on ``--threads`` threads (the reference);
- ``serial-<cores>t``: in this process, torch on every core of the machine;
- ``dask-1``, ``dask-2``: a LocalCluster of 1 and 2 single-threaded worker processes on
  127.0.0.1 (started by the score stage itself: its start-up is in the time).

Every variant must store the same scores as ``serial`` (checked). Then the scheduler's
overhead per task is measured (a no-op mapped over ``--overhead-tasks`` jobs on 2 workers),
and the model of K workers is printed: per-crop cost x crops / K + overhead x crops +
start-up. Goal: dask-2 >= 1.8x serial (2 workers on 2 cores, a pool large enough).

Each variant's result goes to benchmarks/results/bench_dask_scoring/<pool>/<variant>.json
(one folder per pool size, crop and thread setting) and is not run again while that file
exists (delete it, or pass --fresh). The machine's run-to-run spread can exceed the gap to the
goal: ``--repeats N`` runs serial and dask-2 again, one after the other, and prints the median
ratio of the pairs.

    .venv/bin/python benchmarks/bench_dask_scoring.py [--volumes 2] [--shape 16 128 128]
        [--crop 16 32 32] [--threads 1] [--overhead-tasks 500] [--fresh] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import psutil
from bench_pool_scoring import bench_config, make_project, make_sources, untrained_checkpoint
from distributed import LocalCluster

from activeseg.config import ComputeConfig, Config
from activeseg.pool import rounds as pool_rounds
from activeseg.workflows import score
from activeseg.workflows.distributed import WORKER_SETTINGS, dask_client
from activeseg.workflows.project import Project, open_project

RESULTS = Path(__file__).resolve().parent / "results" / "bench_dask_scoring"
GOAL = 1.8


def score_once(root: Path, model: Path, config: Config) -> dict[str, Any]:
    """Score every unlabeled crop of the project at root once; return wall and CPU seconds
    (of this process, plus of the Dask workers when config names a scheduler) and scores."""
    project = open_project(root)
    project = Project(project.root, config, project.engine)
    with project.session() as session:
        info = pool_rounds.start_round(session, strategy="instance", batch_size=4, config="")
    workers_before = workers_cpu(config)
    cpu, start = time.process_time(), time.perf_counter()
    report = score.score_pool(project, info.id, info.number, model)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    workers = workers_cpu(config) - workers_before
    with project.session() as session:
        scores = {s.crop_id: s.score for s in pool_rounds.round_scores(session, info.id)}
    project.engine.dispose()
    return {
        "seconds": seconds,
        "client_cpu_s": cpu,
        "workers_cpu_s": workers,
        "crops": report.computed,
        "scores": scores,
    }


def workers_cpu(config: Config) -> float:
    """Return the CPU seconds (user + system) the scheduler's workers have used so far."""
    if config.compute.scheduler is None:
        return 0.0
    with dask_client(config.compute) as client:
        times = client.run(lambda: sum(psutil.Process().cpu_times()[:2]))
    return float(sum(times.values()))


def variant_config(config: Config, threads: int, scheduler: str | None = None) -> Config:
    """Return config with torch's thread count and a Dask scheduler (None: this process)."""
    train = config.train.model_copy(update={"threads": threads})
    compute = ComputeConfig(scheduler=scheduler)
    return config.model_copy(update={"train": train, "compute": compute})


def run_variant(
    name: str,
    base: Path,
    model: Path,
    config: Config,
    work: Path,
    fresh: bool,
    workers: int,
    results: Path,
) -> dict[str, Any]:
    """Return a variant's result, from its results file when one exists; workers > 0 runs it
    on a LocalCluster of that many workers, started (and timed) before the score stage."""
    path = results / f"{name}.json"
    if path.exists() and not fresh:
        print(f"{name}: from {path}")
        return dict(json.loads(path.read_text()))
    root = Path(shutil.copytree(base, work / name))
    load = os.getloadavg()[0]
    if workers:
        start = time.perf_counter()
        with (
            dask.config.set(WORKER_SETTINGS),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
            ) as cluster,
        ):
            started = time.perf_counter() - start
            address = str(cluster.scheduler_address)
            result = score_once(
                root, model, config.model_copy(update={"compute": ComputeConfig(scheduler=address)})
            )
        result["start_s"] = started
    else:
        result = score_once(root, model, config)
    result["scores"] = {str(k): v for k, v in result["scores"].items()}
    result["load"] = (load + os.getloadavg()[0]) / 2
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def pool_name(args: argparse.Namespace) -> str:
    """Return the results folder of a pool and thread setting, e.g. v4-16x128x128-c16x32x32-t1."""
    shape, crop = ("x".join(map(str, v)) for v in (args.shape, args.crop))
    return f"v{args.volumes}-{shape}-c{crop}-t{args.threads}"


def _noop(x: int) -> int:
    return x


def scheduler_overhead(tasks: int) -> tuple[float, float]:
    """Return (seconds to start a 2-worker LocalCluster, seconds of overhead per task)."""
    start = time.perf_counter()
    with dask_client(ComputeConfig(workers=2)) as client:
        started = time.perf_counter() - start
        client.gather(client.map(_noop, range(20), pure=False))  # warm the connections
        begin = time.perf_counter()
        client.gather(client.map(_noop, range(tasks), pure=False))
        per_task = (time.perf_counter() - begin) / tasks
    return started, per_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 128, 128))
    parser.add_argument("--crop", type=int, nargs=3, default=(16, 32, 32))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overhead-tasks", type=int, default=500)
    parser.add_argument("--fresh", action="store_true", help="run every variant again")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run serial and dask-2 again, interleaved, N-1 times"
    )
    args = parser.parse_args()
    config = bench_config("smoke", args.shape, args.crop, 1_000_000)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        work = Path(tmp)
        sources = make_sources(work / "sources", config, args.volumes)
        base = work / "base"
        make_project(base, config, sources).engine.dispose()
        model = untrained_checkpoint(work / "model", config, 3)
        results = RESULTS / pool_name(args)
        variants = {
            "serial": (variant_config(config, args.threads), 0),
            f"serial-{cores}t": (variant_config(config, cores), 0),
            "dask-1": (variant_config(config, args.threads), 1),
            "dask-2": (variant_config(config, args.threads), 2),
        }
        measured = {
            name: run_variant(name, base, model, cfg, work, args.fresh, workers, results)
            for name, (cfg, workers) in variants.items()
        }
        for repeat in range(1, args.repeats):  # the pair again, one right after the other
            for name in ("serial", "dask-2"):
                cfg, workers = variants[name]
                again = f"{name}-r{repeat}"
                measured[again] = run_variant(
                    again, base, model, cfg, work, args.fresh, workers, results
                )
    report(measured, args, cores)
    if args.repeats > 1:
        ratios = [
            measured[f"serial{r}"]["seconds"] / measured[f"dask-2{r}"]["seconds"]
            for r in ["", *(f"-r{k}" for k in range(1, args.repeats))]
        ]
        median = statistics.median(ratios)
        print(
            f"dask-2 / serial of each interleaved pair: {', '.join(f'{r:.2f}' for r in ratios)}"
            f"; median {median:.2f}x ({median / GOAL:.2f} of the goal)"
        )


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, cores: int) -> None:
    """Print throughput, ratios, the overhead and the K-worker model."""
    reference = results["serial"]
    crops = int(reference["crops"])
    print(f"{crops} crops of {tuple(args.crop)}, {cores} cores, torch threads {args.threads}")
    for name, result in results.items():
        same = result["scores"] == reference["scores"]
        rate = result["crops"] / result["seconds"]
        ratio = reference["seconds"] / result["seconds"]
        cpu = (result["client_cpu_s"] + result["workers_cpu_s"]) / result["crops"]
        start = f"  cluster start {result['start_s']:.1f} s" if "start_s" in result else ""
        print(
            f"{name:>10}: {result['seconds']:7.1f} s  {rate:6.2f} crops/s  {ratio:5.2f}x serial"
            f"  CPU {cpu:.2f} s/crop  load {result['load']:.1f}  scores identical: {same}{start}"
        )
    ratio = reference["seconds"] / results["dask-2"]["seconds"]
    print(f"goal dask-2 >= {GOAL}x serial: {ratio:.2f}x ({ratio / GOAL:.2f} of the goal)")
    serial_cpu = reference["client_cpu_s"] / crops
    dask_cpu = (results["dask-2"]["client_cpu_s"] + results["dask-2"]["workers_cpu_s"]) / crops
    print(
        f"CPU per crop: dask-2 {dask_cpu:.2f} s against serial {serial_cpu:.2f} s "
        f"(x{dask_cpu / serial_cpu:.2f}); on 2 idle cores dask-2 would run "
        f"{2 * serial_cpu / dask_cpu:.2f}x serial"
    )
    started, per_task = scheduler_overhead(args.overhead_tasks)
    per_crop = dask_cpu  # on a dedicated core a crop's wall time is its CPU time
    print(
        f"LocalCluster(2) start {started:.2f} s; scheduler overhead {per_task * 1000:.2f} ms "
        f"per task ({args.overhead_tasks} no-op tasks); per-crop cost {per_crop:.3f} CPU s"
    )
    print("model (K dedicated workers): T(K) = per_crop x crops / K + overhead x crops + start")
    for workers in (1, 2, 4, 8, 16, 64):
        for pool in (crops, 10_000):
            seconds = per_crop * pool / workers + per_task * pool + started
            print(f"  K={workers:>2}  {pool:>6} crops: {seconds:9.1f} s")


if __name__ == "__main__":
    main()
