"""A round's pool side on FISBe-size volumes: import, score and select, then the cached round.

The real-pools issue asks for a round on a pool of 4 volumes of (3, 400, 700, 700) with the
flylight config and ``acquisition.max_candidates`` 200: time per stage, and a second round with
an unchanged model taking its scores from the cache. Volumes are written slab by slab (the
tubes of ``bench_import_memory.py``), imported with the real importer, and scored by the real
score stage with an untrained checkpoint of the flylight architecture (scoring costs the same
for any checkpoint; training time is ``train.steps`` × the seconds per step of
``bench_quality.py`` and is not repeated here).

Goals: round 2 / round 1 score time <= 0.1 (cache); every stage's peak RSS printed.

    .venv/bin/python benchmarks/bench_fisbe_round.py [--volumes 4] [--depth 400] [--size 700]
        [--max-candidates 200] [--work DIR]

``--work`` keeps the written volumes between runs (written once, reused).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_import_memory import write_fisbe
from bench_pool_scoring import CACHE_GOAL, timed_round, untrained_checkpoint

from activeseg.config import Config, load_config
from activeseg.workflows import score
from activeseg.workflows.importing import import_volume
from activeseg.workflows.project import init_project

GIB = 2**30


def peak_rss_gib() -> float:
    """Return this process's peak RSS so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def bench(work: Path, volumes: int, depth: int, size: int, budget: int) -> dict[str, Any]:
    """Return the seconds and peak RSS of each stage."""
    sources = []
    for k in range(volumes):
        path = work / f"fisbe{k}-{depth}x{size}.zarr"
        if not path.exists():
            write_fisbe(path, depth, size, seed=k)
        sources.append(path)
    data = load_config("flylight").model_dump()
    data["acquisition"]["max_candidates"] = budget
    config = Config.model_validate(data)
    root = Path(tempfile.mkdtemp(prefix="project-", dir=work))
    (root.parent / f"{root.name}.yaml").write_text(config.to_yaml())
    project = init_project(root, root.parent / f"{root.name}.yaml")
    stages: dict[str, Any] = {}
    start = time.perf_counter()
    crops = sum(import_volume(project, p, "fisbe", split="pool").crops for p in sources)
    stages["import"] = {"seconds": time.perf_counter() - start, "crops": crops}
    model = untrained_checkpoint(root / "bench-model", config, 3)
    seconds, report, round_id = timed_round(project, model)
    stages["score"] = {"seconds": seconds, "scored": report.scored, "unlabeled": report.unlabeled}
    start = time.perf_counter()
    score.select_crops(project, round_id, "instance", 4)
    stages["select"] = {"seconds": time.perf_counter() - start}
    seconds, again, _ = timed_round(project, model)
    stages["score again"] = {"seconds": seconds, "cached": again.cached,
                             "computed": again.computed}  # fmt: skip
    stages["peak_rss_gib"] = peak_rss_gib()
    return stages


def main() -> None:
    """Run the benchmark; print each stage and the cache ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--depth", type=int, default=400)
    parser.add_argument("--size", type=int, default=700)
    parser.add_argument("--max-candidates", type=int, default=200)
    parser.add_argument("--work", type=Path, help="keep the written volumes here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-fisbe-round-"))
    work.mkdir(parents=True, exist_ok=True)
    result = bench(work, args.volumes, args.depth, args.size, args.max_candidates)
    for stage in ("import", "score", "select", "score again"):
        details = ", ".join(f"{k} {v}" for k, v in result[stage].items() if k != "seconds")
        print(f"{stage:>12}: {result[stage]['seconds']:8.2f} s  {details}")
    ratio = result["score again"]["seconds"] / result["score"]["seconds"]
    ok = ratio <= CACHE_GOAL and result["score again"]["computed"] == 0
    print(f"peak RSS {result['peak_rss_gib']:.2f} GiB")
    print(f"score again / score: {ratio:.3f} (goal <= {CACHE_GOAL}: {'met' if ok else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps({**result, "cache_ratio": ratio}))


if __name__ == "__main__":
    main()
