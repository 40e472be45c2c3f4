"""A pool of 10,000 crops scored and selected: no step may be quadratic in the pool.

For pools of 2,500, 5,000 and 10,000 crops (one project each; a volume registered in the
ledger and tiled into non-overlapping crops, no arrays: the point is the ledger and the
selection, not the model), times each step of a round that touches every crop:

- tile: ``add_crops`` of the whole pool (what import records);
- candidates: the unlabeled pool crops and the round's candidates (``score_pool``'s setup:
  ``list_crops``, ``cached_scores``, ``candidate_crops``, ``keep_scores``, ``scored_crop_ids``);
- record scores: fake but well-formed score parts stored as the score stage commits them
  (``bench_ledger.record_scores``);
- select: the real ``workflows.score.select_crops`` (ranking with the configured strategy and
  diversity, overlap ordering, ``record_selection``);
- selected: ``selected_crops``, what push reads.

Prints milliseconds per crop at each size and the ratio of the largest pool's to the
smallest's: about 1 for a linear step, 4 for a quadratic one over a 4x pool (goal: <= 2). On
SQLite the times are this process's CPU time (the ledger runs in it), which other jobs on the
machine do not inflate; on PostgreSQL they are wall-clock time (the server's work counts).

    .venv/bin/python benchmarks/bench_pool_10k.py [--sizes 2500 5000 10000] [--postgres]
        [--no-select]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_ledger import POSTGRES_ENV, add_pool, ledger_project, record_scores

from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.project import Project
from activeseg.workflows.score import candidate_crops, select_crops, selected_crops

GOAL = 2.0
STEPS = ("tile", "candidates", "record scores", "select", "selected")


def candidates(project: Project, round_id: int) -> int:
    """Run the score stage's setup against the ledger; return the number of candidates."""
    with project.session() as session:
        crops = pool_volumes.list_crops(session, status="unlabeled", split="pool")
        cache = pool_rounds.cached_scores(session, "model")
        chosen = candidate_crops(project, crops, 1, set(cache))
        pool_rounds.keep_scores(session, round_id, {c.id for c in chosen})
        pool_rounds.scored_crop_ids(session, round_id)
    return len(chosen)


def measure(size: int, kind: str, admin: str | None, with_select: bool) -> dict[str, float]:
    """Return the seconds of each step on a pool of ``size`` crops."""
    seconds: dict[str, float] = {}
    clock = time.process_time if kind == "sqlite" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp, ledger_project(kind, Path(tmp), admin) as project:
        start = clock()
        crop_ids = add_pool(project, size)
        seconds["tile"] = clock() - start
        with project.session() as session:
            round_id = pool_rounds.start_round(
                session, strategy="instance", batch_size=4, config=""
            ).id
        start = clock()
        assert candidates(project, round_id) == size
        seconds["candidates"] = clock() - start
        start = clock()
        record_scores(project, round_id, crop_ids)
        seconds["record scores"] = clock() - start
        if not with_select:
            return seconds
        strategy = project.config.acquisition.strategy
        start = clock()
        chosen = select_crops(project, round_id, strategy, 4)
        seconds["select"] = clock() - start
        start = clock()
        assert [c.id for c in selected_crops(project, round_id)] == chosen
        seconds["selected"] = clock() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10_000])
    parser.add_argument(
        "--postgres",
        action="store_true",
        help=f"the ledger on the PostgreSQL server of ${POSTGRES_ENV} (default SQLite)",
    )
    parser.add_argument(
        "--no-select",
        dest="select",
        action="store_false",
        help="stop after recording the scores (selection is quadratic before its fix)",
    )
    args = parser.parse_args()
    kind = "postgresql" if args.postgres else "sqlite"
    admin = os.environ.get(POSTGRES_ENV)
    steps = STEPS if args.select else STEPS[:3]
    results = {size: measure(size, kind, admin, args.select) for size in args.sizes}
    small, large = min(args.sizes), max(args.sizes)
    header = " ".join(f"{size:>9}" for size in args.sizes)
    clock = "CPU" if kind == "sqlite" else "wall-clock"
    print(f"{kind} ledger; {clock} ms per crop at pool size\n{'step':<14} {header}  ratio")
    for step in (*steps, "total"):
        per_crop = {
            size: 1000 * (sum(r.values()) if step == "total" else r[step]) / size
            for size, r in results.items()
        }
        ratio = per_crop[large] / per_crop[small]
        cells = " ".join(f"{per_crop[size]:>9.3f}" for size in args.sizes)
        verdict = "ok" if ratio <= GOAL else "SUPERLINEAR"
        print(f"{step:<14} {cells}  {ratio:5.2f}  {verdict}")
    print(
        f"ratio = per-crop time at {large} / at {small} crops "
        f"(1 linear, {large / small:g} quadratic); goal <= {GOAL:g}"
    )


if __name__ == "__main__":
    main()
