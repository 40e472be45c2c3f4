"""Repository functions for rounds, their recorded stages, checkpoints and scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session, selectinload

from activeseg.errors import NotFoundError
from activeseg.pool.models import Checkpoint, Round, Score, ScoreCache, Stage, StageStatus, utcnow
from activeseg.pool.records import CachedScore, CheckpointInfo, RoundInfo, ScoreInfo, StageInfo


def _stage_info(row: Stage) -> StageInfo:
    return StageInfo(
        name=row.name,
        status=row.status.value,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outputs=dict(row.outputs),
        error=row.error,
    )


def _round_info(row: Round) -> RoundInfo:
    return RoundInfo(
        id=row.id,
        number=row.number,
        strategy=row.strategy,
        batch_size=row.batch_size,
        config=row.config,
        metrics=dict(row.metrics),
        started_at=row.started_at,
        finished_at=row.finished_at,
        stages=tuple(_stage_info(s) for s in row.stages),
        abandoned=row.abandoned,
    )


def count_rounds(session: Session) -> int:
    """Return how many rounds the project has started."""
    return session.scalar(select(func.count()).select_from(Round)) or 0


def start_round(session: Session, *, strategy: str, batch_size: int, config: str) -> RoundInfo:
    """Start the next round (numbered from 0) and return it."""
    last = session.scalar(select(func.max(Round.number)))
    row = Round(
        number=0 if last is None else last + 1,
        strategy=strategy,
        batch_size=batch_size,
        config=config,
        metrics={},
    )
    session.add(row)
    session.flush()
    return _round_info(row)


def _round_row(session: Session, round_id: int) -> Round:
    row = session.get(Round, round_id, options=[selectinload(Round.stages)])
    if row is None:
        raise NotFoundError(f"no round with id {round_id}")
    return row


def get_round(session: Session, number: int) -> RoundInfo:
    """Return the round with this number, or raise NotFoundError."""
    row = session.scalar(select(Round).where(Round.number == number))
    if row is None:
        raise NotFoundError(f"no round {number} in this project")
    return _round_info(row)


def list_rounds(session: Session) -> list[RoundInfo]:
    """Return all rounds, oldest first."""
    query = select(Round).options(selectinload(Round.stages)).order_by(Round.number)
    return [_round_info(row) for row in session.scalars(query)]


def open_round(session: Session) -> RoundInfo | None:
    """Return the newest round if it has not finished, else None."""
    row = session.scalar(select(Round).order_by(Round.number.desc()).limit(1))
    return None if row is None or row.finished_at is not None else _round_info(row)


def begin_stage(session: Session, round_id: int, name: str) -> None:
    """Record that a stage started (again, if an earlier attempt failed or was killed)."""
    row = session.scalar(select(Stage).where(Stage.round_id == round_id, Stage.name == name))
    if row is None:
        session.add(Stage(round_id=round_id, name=name, status=StageStatus.RUNNING, outputs={}))
    else:
        row.status, row.started_at, row.finished_at, row.error = (
            StageStatus.RUNNING,
            utcnow(),
            None,
            None,
        )
    session.flush()


def end_stage(
    session: Session,
    round_id: int,
    name: str,
    *,
    outputs: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record that a stage finished (done, with outputs) or failed (with the error)."""
    row = session.scalar(select(Stage).where(Stage.round_id == round_id, Stage.name == name))
    if row is None:
        raise NotFoundError(f"stage {name} of round id {round_id} was never started")
    row.status = StageStatus.FAILED if error else StageStatus.DONE
    row.finished_at = utcnow()
    row.outputs = outputs or {}
    row.error = error
    session.flush()


def finish_round(session: Session, round_id: int) -> RoundInfo:
    """Mark a round finished and return it."""
    row = _round_row(session, round_id)
    row.finished_at = utcnow()
    session.flush()
    return _round_info(row)


def abandon_round(session: Session, round_id: int) -> RoundInfo:
    """Close an unfinished round as abandoned (kept in the history) and return it."""
    row = _round_row(session, round_id)
    row.finished_at, row.abandoned = utcnow(), True
    session.flush()
    return _round_info(row)


def update_round_metrics(session: Session, round_id: int, metrics: dict[str, Any]) -> None:
    """Merge metrics into a round's record."""
    row = _round_row(session, round_id)
    row.metrics = {**row.metrics, **metrics}
    session.flush()


def _checkpoint_info(row: Checkpoint) -> CheckpointInfo:
    return CheckpointInfo(
        id=row.id,
        round_id=row.round_id,
        path=row.path,
        kind=row.kind,
        steps=row.steps,
        labeled_crops=row.labeled_crops,
        created_at=row.created_at,
    )


def add_checkpoint(
    session: Session,
    *,
    round_id: int | None,
    path: str,
    kind: str,
    steps: int,
    labeled_crops: int,
) -> CheckpointInfo:
    """Record a trained model folder and return it."""
    row = Checkpoint(
        round_id=round_id, path=path, kind=kind, steps=steps, labeled_crops=labeled_crops
    )
    session.add(row)
    session.flush()
    return _checkpoint_info(row)


def latest_checkpoint(session: Session, round_id: int | None = None) -> CheckpointInfo | None:
    """Return the newest checkpoint (of one round, if given), or None."""
    query = select(Checkpoint).order_by(Checkpoint.id.desc()).limit(1)
    if round_id is not None:
        query = query.where(Checkpoint.round_id == round_id)
    row = session.scalar(query)
    return None if row is None else _checkpoint_info(row)


def recent_checkpoints(session: Session, limit: int = 5) -> list[CheckpointInfo]:
    """Return up to ``limit`` checkpoints, newest first."""
    rows = session.scalars(select(Checkpoint).order_by(Checkpoint.id.desc()).limit(limit))
    return [_checkpoint_info(row) for row in rows]


def save_scores(
    session: Session, round_id: int, scores: Sequence[tuple[int, float, dict[str, Any]]]
) -> None:
    """Store ``(crop_id, score, parts)`` for a round, replacing the round's earlier scores."""
    session.execute(delete(Score).where(Score.round_id == round_id))
    session.add_all(
        Score(round_id=round_id, crop_id=crop_id, score=score, parts=parts)
        for crop_id, score, parts in scores
    )
    session.flush()


def add_scores(
    session: Session, round_id: int, scores: Sequence[tuple[int, float, dict[str, Any]]]
) -> None:
    """Add ``(crop_id, score, parts)`` rows to a round, keeping the rows it already has."""
    session.add_all(
        Score(round_id=round_id, crop_id=crop_id, score=score, parts=parts)
        for crop_id, score, parts in scores
    )
    session.flush()


def scored_crop_ids(session: Session, round_id: int) -> set[int]:
    """Return the crops that already have a score row in a round."""
    return set(session.scalars(select(Score.crop_id).where(Score.round_id == round_id)))


def keep_scores(session: Session, round_id: int, crop_ids: set[int]) -> int:
    """Delete a round's score rows of crops not in ``crop_ids``; return how many went."""
    stale = scored_crop_ids(session, round_id) - crop_ids
    if stale:
        session.execute(
            delete(Score).where(Score.round_id == round_id, Score.crop_id.in_(sorted(stale)))
        )
        session.flush()
    return len(stale)


def cached_scores(session: Session, model: str) -> dict[int, CachedScore]:
    """Return the cached score parts of one model, by crop id."""
    rows = session.scalars(select(ScoreCache).where(ScoreCache.model == model))
    return {r.crop_id: CachedScore(r.crop_id, r.model, dict(r.parts), r.analysis) for r in rows}


def cache_scores(session: Session, scores: Sequence[CachedScore]) -> None:
    """Store score parts per (crop, model), replacing an earlier entry of the same pair."""
    if scores:  # one statement, not one per entry: a round trip each on a server
        pairs = [(e.crop_id, e.model) for e in scores]
        session.execute(
            delete(ScoreCache).where(tuple_(ScoreCache.crop_id, ScoreCache.model).in_(pairs))
        )
    session.add_all(
        ScoreCache(crop_id=e.crop_id, model=e.model, parts=e.parts, analysis=e.analysis)
        for e in scores
    )
    session.flush()


def prune_score_cache(session: Session, model: str) -> int:
    """Delete the cached scores of every model but ``model``; return how many rows went."""
    result = session.execute(delete(ScoreCache).where(ScoreCache.model != model))
    session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def record_selection(session: Session, round_id: int, ranking: Sequence[int], n: int) -> None:
    """Store each scored crop's rank (order of ``ranking``) and mark the first ``n`` selected."""
    rows = {r.crop_id: r for r in session.scalars(select(Score).where(Score.round_id == round_id))}
    for rank, crop_id in enumerate(ranking):
        if crop_id not in rows:
            raise NotFoundError(f"crop {crop_id} has no score in round id {round_id}")
        rows[crop_id].rank, rows[crop_id].selected = rank, rank < n
    session.flush()


def round_scores(session: Session, round_id: int) -> list[ScoreInfo]:
    """Return a round's scores, best rank first (unranked last)."""
    query = select(Score).where(Score.round_id == round_id)
    rows = sorted(session.scalars(query), key=lambda r: (r.rank is None, r.rank, -r.score))
    return [ScoreInfo(r.crop_id, r.score, r.rank, r.selected, dict(r.parts)) for r in rows]
