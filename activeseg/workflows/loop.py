"""A round of the loop as recorded, resumable stages.

ingest → train → evaluate → score → select → push. Each stage is recorded in the pool when it
starts and when it ends; a round that was interrupted resumes at its first unfinished stage.
Every stage is safe to run again after a crash half-way: it either finds its work done (a
checkpoint of this round, a task of this crop) or replaces what it half-wrote.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from activeseg.choices import Stage, Strategy
from activeseg.errors import InputError, StateError
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import RoundInfo
from activeseg.workflows import annotators, fit, score
from activeseg.workflows.locks import hold_lock
from activeseg.workflows.project import Project
from activeseg.workflows.stages import (
    EvaluateOutput,
    IngestOutput,
    PushOutput,
    RoundContext,
    ScoreOutput,
    SelectOutput,
    StageOutput,
    TrainOutput,
)

log = logging.getLogger(__name__)

STAGES = tuple(stage.value for stage in Stage)
LOCK = "round"

StageEvents = Callable[[str, str, dict[str, Any]], None]


def run_round(
    project: Project,
    *,
    until: str | None = None,
    strategy: str | None = None,
    batch_size: int | None = None,
    events: StageEvents | None = None,
) -> RoundInfo:
    """Run (or resume) a round up to and including ``until``; return it as recorded."""
    if until is not None and until not in STAGES:
        raise InputError(f"--until must be one of {', '.join(STAGES)}; got {until!r}")
    if strategy is not None and strategy not in set(Strategy):
        raise InputError(f"strategy must be one of {', '.join(Strategy)}; got {strategy!r}")
    with hold_lock(project.root, LOCK):
        current = _open_or_start(project, strategy, batch_size)
        for stage in STAGES:
            recorded = current.stage(stage)
            if recorded is None or recorded.status != "done":
                _run_stage(RoundContext(project, current), stage, events)
            elif events is not None:
                events(stage, "skipped", recorded.outputs)
            if stage == until:
                break
        with project.session() as session:
            if until in (None, STAGES[-1]):
                pool_rounds.finish_round(session, current.id)
            return pool_rounds.get_round(session, current.number)


def abandon_round(project: Project) -> RoundInfo:
    """Close the open round as abandoned (it stays in the history); return it.

    Raises StateError when no round is open, LockError while a round runs.
    """
    with hold_lock(project.root, LOCK), project.session() as session:
        current = pool_rounds.open_round(session)
        if current is None:
            raise StateError("no round is open: nothing to abandon")
        return pool_rounds.abandon_round(session, current.id)


def _refuse_overrides(current: RoundInfo, strategy: str | None, batch_size: int | None) -> None:
    """Raise InputError if a resumed round is asked to run with other settings."""
    asked = {"strategy": strategy, "batch size": batch_size}
    has = {"strategy": current.strategy, "batch size": current.batch_size}
    differ = [k for k, v in asked.items() if v is not None and str(v) != str(has[k])]
    if differ:
        started = ", ".join(f"{k} {has[k]}" for k in differ)
        raise InputError(
            f"round {current.number} is open and resumes with the {started} it started with; "
            f"finish it with `activeseg round`, or close it with `activeseg round --abandon`"
        )


def _open_or_start(project: Project, strategy: str | None, batch_size: int | None) -> RoundInfo:
    acq = project.config.acquisition
    with project.session() as session:
        existing = pool_rounds.open_round(session)
        if existing is not None:
            _refuse_overrides(existing, strategy, batch_size)
            return existing
        first = pool_rounds.count_rounds(session) == 0
        chosen = strategy or (project.config.loop.first_strategy if first else acq.strategy)
        return pool_rounds.start_round(
            session,
            strategy=chosen,
            batch_size=batch_size or acq.batch_size,
            config=project.config.to_yaml(),
        )


def _run_stage(context: RoundContext, stage: str, events: StageEvents | None) -> None:
    project, number = context.project, context.round.number
    with project.session() as session:
        pool_rounds.begin_stage(session, context.round.id, stage)
    if events is not None:
        events(stage, "running", {})
    try:
        outputs = STAGE_FUNCTIONS[stage](context).as_dict()
    except BaseException as exc:
        with project.session() as session:
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            pool_rounds.end_stage(session, context.round.id, stage, error=error or "interrupted")
        raise
    with project.session() as session:
        pool_rounds.end_stage(session, context.round.id, stage, outputs=outputs)
    log.info("round %d: %s done %s", number, stage, outputs)
    if events is not None:
        events(stage, "done", outputs)


def _ingest(context: RoundContext) -> IngestOutput:
    return annotators.annotator_for(context.project).collect(context)


def _train(context: RoundContext) -> TrainOutput:
    project, current = context.project, context.round
    with project.session() as session:
        done = pool_rounds.latest_checkpoint(session, round_id=current.id)
        labeled = pool_volumes.list_crops(session, status="labeled", split="pool")
    if done is None and not labeled:
        return TrainOutput(skipped="no labeled crops yet")
    unchanged = None if done is not None else _unchanged_since(project, len(labeled))
    if unchanged is not None:  # a new checkpoint would only miss the score cache
        return TrainOutput(skipped=f"no labels changed since {unchanged}")
    # A checkpoint of this round: trained before a crash that hit before the stage was recorded.
    checkpoint = done or fit.train_project(
        project, round_id=current.id, round_number=current.number
    )
    return TrainOutput(checkpoint.path, checkpoint.steps, checkpoint.labeled_crops)


def _unchanged_since(project: Project, labeled: int) -> str | None:
    """Return the newest checkpoint's path if no label changed since it was trained, else None."""
    with project.session() as session:
        previous = pool_rounds.latest_checkpoint(session)
        if previous is None or previous.labeled_crops != labeled:
            return None
        changed = pool_tasks.annotations_since(session, previous.created_at)
    return previous.path if changed == 0 else None


def _model_of(context: RoundContext) -> str | None:
    with context.project.session() as session:
        checkpoint = pool_rounds.latest_checkpoint(session)
    return None if checkpoint is None else checkpoint.path


def _evaluate(context: RoundContext) -> EvaluateOutput:
    model = _model_of(context)
    if model is None:
        return EvaluateOutput(skipped="no model yet")
    from activeseg.workflows.evaluate import evaluate_project

    metrics = evaluate_project(context.project, context.project.resolve(model))
    with context.project.session() as session:
        pool_rounds.update_round_metrics(session, context.round.id, metrics)
    return EvaluateOutput(metrics)


def _score(context: RoundContext) -> ScoreOutput:
    model = _model_of(context)
    path = context.project.resolve(model) if model is not None else None
    scored = score.score_pool(context.project, context.round.id, context.round.number, path).scored
    return ScoreOutput(scored, model)


def _select(context: RoundContext) -> SelectOutput:
    current = context.round
    score.select_crops(context.project, current.id, current.strategy, current.batch_size)
    with context.project.session() as session:
        chosen = [s.crop_id for s in pool_rounds.round_scores(session, current.id) if s.selected]
    return SelectOutput(tuple(chosen), current.strategy)


def _push(context: RoundContext) -> PushOutput:
    return annotators.annotator_for(context.project).push(context)


STAGE_FUNCTIONS: dict[str, Callable[[RoundContext], StageOutput]] = {
    "ingest": _ingest,
    "train": _train,
    "evaluate": _evaluate,
    "score": _score,
    "select": _select,
    "push": _push,
}
