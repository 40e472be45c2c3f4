"""Ledger operations per second on SQLite and on PostgreSQL, on the loop's hot paths.

The same repository functions the loop calls, in the same transactions:

- record scores: the score stage commits every ``COMMIT_EVERY`` (16) crops one transaction
  with ``add_scores`` and ``cache_scores`` (``workflows.score._Scorer.commit``); 10,000 scores;
- ingest annotations: per answered task, one transaction that looks the task and its current
  annotation up, one that records the annotation and settles the crop
  (``workflows.ingest``); 1,000 annotations;
- select: ``round_scores`` of the round and ``record_selection`` of its ranking (the ledger
  part of ``workflows.score.select_crops``).

Goal: PostgreSQL within 2x of SQLite (ratio = seconds on PostgreSQL / seconds on SQLite).
PostgreSQL is the server of ``--postgres`` (an admin URL, default
``$ACTIVESEG_TEST_POSTGRES_URL``): the benchmark creates a database of its own and drops it.

    .venv/bin/python benchmarks/bench_ledger.py [--scores 10000] [--annotations 1000]
        [--postgres postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/postgres]
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import URL, text

from activeseg.pool import db
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CachedScore
from activeseg.workflows.project import Project, init_project
from activeseg.workflows.score import COMMIT_EVERY

GOAL = 2.0
POSTGRES_ENV = "ACTIVESEG_TEST_POSTGRES_URL"
CROP = (16, 32, 32)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _execute(url: URL, statement: str) -> None:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text(statement))
    finally:
        engine.dispose()


@contextmanager
def ledger_project(kind: str, workdir: Path, admin: str | None) -> Iterator[Project]:
    """Yield an empty project whose ledger is SQLite or a fresh PostgreSQL database."""
    root = workdir / kind
    if kind == "sqlite":
        yield init_project(root, "smoke")
        return
    if not admin:
        raise SystemExit(f"PostgreSQL needs --postgres or ${POSTGRES_ENV} (an admin URL)")
    server = db.parse_postgres_url(admin)
    name = f"activeseg_bench_{secrets.token_hex(4)}"
    _execute(server, f'CREATE DATABASE "{name}"')
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        project = init_project(root, "smoke", database=url)
        yield project
        project.engine.dispose()
    finally:
        _execute(server, f'DROP DATABASE "{name}" WITH (FORCE)')


def add_pool(project: Project, crops: int) -> list[int]:
    """Register one volume tiled into ``crops`` non-overlapping crops; return their ids."""
    z, y, x = CROP
    side = int(crops**0.5) + 1
    boxes = [
        ((0, y * (k // side), x * (k % side)), (z, y * (k // side + 1), x * (k % side + 1)), 0.1)
        for k in range(crops)
    ]
    with project.session() as session:
        volume = pool_volumes.add_volume(
            session,
            name="pool0",
            path="volumes/pool0.zarr",
            split="pool",
            channels=3,
            shape=(z, y * side, x * side),
            voxel_size=(1.0, 0.5, 0.5),
            has_ground_truth=True,
            source="bench",
        )
        return [c.id for c in pool_volumes.add_crops(session, volume.id, boxes)]


def fake_parts(crop_id: int) -> dict[str, object]:
    """Return score parts shaped like the score stage's (four scores and a descriptor)."""
    value = ((crop_id * 2654435761) % 1000) / 1000 + 0.001
    return {
        "uncertainty": value,
        "bald": value / 2,
        "instance": value * 3,
        "cost": 1.0 + value,
        "descriptor": [value * k for k in range(8)],
    }


def record_scores(project: Project, round_id: int, crop_ids: list[int]) -> None:
    """Store scores and cache entries the way the score stage commits them."""
    for start in range(0, len(crop_ids), COMMIT_EVERY):
        batch = crop_ids[start : start + COMMIT_EVERY]
        rows = [(c, float(fake_parts(c)["instance"]), fake_parts(c)) for c in batch]  # type: ignore[arg-type]
        fresh = [CachedScore(c, "model", fake_parts(c), f"analysis/{c}.zarr") for c in batch]
        with project.session() as session:
            pool_rounds.add_scores(session, round_id, rows)
            pool_rounds.cache_scores(session, fresh)


def select(project: Project, round_id: int, batch: int) -> None:
    """Read a round's scores and record a ranking of them, as selection does."""
    with project.session() as session:
        stored = pool_rounds.round_scores(session, round_id)
    ranking = [s.crop_id for s in sorted(stored, key=lambda s: -s.score)]
    with project.session() as session:
        pool_rounds.record_selection(session, round_id, ranking, batch)


def queue_tasks(project: Project, round_id: int, crop_ids: list[int]) -> None:
    """Queue a Label Studio task per crop (setup of the ingest benchmark, not timed)."""
    with project.session() as session:
        for k, crop in enumerate(crop_ids):
            pool_tasks.queue_crop(
                session, crop, round_id=round_id, slices=[0, 8], pushed={}, ls_task_id=k + 1
            )


def ingest(project: Project, count: int) -> None:
    """Record one annotation per task the way ingest does: look up, then record."""
    for k in range(count):
        with project.session() as session:
            task = pool_tasks.task_by_ls_id(session, k + 1)
            assert task is not None
            pool_tasks.current_annotation(session, task.id)
        with project.session() as session:
            pool_tasks.record_annotation(
                session,
                task.id,
                ls_annotation_id=k + 1,
                annotator="bench@lab",
                lead_time=30.0,
                updated_at=T0 + timedelta(seconds=k),
                label_path=f"labels/crop-{task.crop_id}/a.zarr",
                was_cancelled=False,
                round_number=0,
                status="done",
            )


def timed(step: Callable[[], None]) -> float:
    """Return the seconds ``step`` takes."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(kind: str, scores: int, annotations: int, admin: str | None) -> dict[str, float]:
    """Return seconds per hot path on one kind of ledger."""
    with tempfile.TemporaryDirectory() as tmp, ledger_project(kind, Path(tmp), admin) as project:
        crop_ids = add_pool(project, scores)
        with project.session() as session:
            round_id = pool_rounds.start_round(
                session, strategy="instance", batch_size=4, config=""
            ).id
        seconds = {"record scores": timed(lambda: record_scores(project, round_id, crop_ids))}
        seconds["select"] = timed(lambda: select(project, round_id, 4))
        queue_tasks(project, round_id, crop_ids[:annotations])
        seconds["ingest annotations"] = timed(lambda: ingest(project, annotations))
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scores", type=int, default=10_000)
    parser.add_argument("--annotations", type=int, default=1_000)
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV))
    args = parser.parse_args()
    counts = {
        "record scores": args.scores,
        "select": args.scores,
        "ingest annotations": args.annotations,
    }
    results = {
        kind: measure(kind, args.scores, args.annotations, args.postgres)
        for kind in ("sqlite", "postgresql")
    }
    print(f"{'hot path':<20} {'n':>7} {'SQLite ops/s':>13} {'PostgreSQL ops/s':>17} {'ratio':>6}")
    for path, n in counts.items():
        lite, pg = results["sqlite"][path], results["postgresql"][path]
        ratio = pg / lite
        verdict = "ok" if ratio <= GOAL else f"NOT within {GOAL:g}x"
        print(f"{path:<20} {n:>7} {n / lite:>13.0f} {n / pg:>17.0f} {ratio:>6.2f}  {verdict}")
    print(f"ratio = seconds on PostgreSQL / seconds on SQLite; goal <= {GOAL:g}")


if __name__ == "__main__":
    main()
