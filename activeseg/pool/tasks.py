"""Repository functions for annotation tasks and the annotations that answer them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.errors import NotFoundError, StateError
from activeseg.pool.models import Annotation, Crop, CropStatus, Task, clip
from activeseg.pool.records import AnnotationCost, AnnotationInfo, TaskInfo

# A review task's ``pushed`` holds, under this key, what it reviews: the crop's labels then in
# force ("labels", a path), the annotation they came from ("annotation", None for labels given
# at import) and the round the crop was labeled in ("round").
REVIEW_KEY = "review"


def _task_info(row: Task) -> TaskInfo:
    return TaskInfo(
        id=row.id,
        crop_id=row.crop_id,
        round_id=row.round_id,
        ls_project_id=row.ls_project_id,
        ls_task_id=row.ls_task_id,
        slices=tuple(row.slices),
        pushed=dict(row.pushed),
        active=row.active,
    )


def _annotation_info(row: Annotation) -> AnnotationInfo:
    return AnnotationInfo(
        id=row.id,
        task_id=row.task_id,
        ls_annotation_id=row.ls_annotation_id,
        annotator=row.annotator,
        lead_time=row.lead_time,
        updated_at=row.updated_at,
        label_path=row.label_path,
        was_cancelled=row.was_cancelled,
        current=row.current,
        status=row.status,
    )


def queue_crop(
    session: Session,
    crop_id: int,
    *,
    round_id: int | None,
    slices: Sequence[int],
    pushed: dict[str, Any],
    ls_project_id: int | None = None,
    ls_task_id: int | None = None,
) -> TaskInfo:
    """Record a task for an unlabeled crop and mark the crop queued, in the caller's transaction."""
    crop = session.get(Crop, crop_id)
    if crop is None:
        raise NotFoundError(f"no crop with id {crop_id} in this project")
    if crop.status is not CropStatus.UNLABELED:
        raise StateError(f"crop {crop_id} is {crop.status.value}, not unlabeled: not queued again")
    row = _add_task(session, crop_id, round_id, slices, pushed, ls_project_id, ls_task_id)
    crop.status = CropStatus.QUEUED
    session.flush()
    return _task_info(row)


def _add_task(
    session: Session,
    crop_id: int,
    round_id: int | None,
    slices: Sequence[int],
    pushed: dict[str, Any],
    ls_project_id: int | None,
    ls_task_id: int | None,
) -> Task:
    row = Task(
        crop_id=crop_id,
        round_id=round_id,
        slices=[int(s) for s in slices],
        pushed=pushed,
        ls_project_id=ls_project_id,
        ls_task_id=ls_task_id,
        active=True,
    )
    session.add(row)
    return row


def queue_review(
    session: Session,
    crop_id: int,
    *,
    round_id: int | None,
    slices: Sequence[int],
    pushed: dict[str, Any],
    ls_project_id: int | None = None,
    ls_task_id: int | None = None,
) -> TaskInfo:
    """Record a review task for a labeled crop, in the caller's transaction.

    The crop's earlier tasks retire (kept as history; their later edits are not ingested) and
    the crop stays labeled, its labels in force, until the review is answered. ``pushed``
    carries what is reviewed under ``REVIEW_KEY``.
    """
    crop = session.get(Crop, crop_id)
    if crop is None:
        raise NotFoundError(f"no crop with id {crop_id} in this project")
    if REVIEW_KEY not in pushed:
        raise ValueError(f"a review task's pushed data names what it reviews ({REVIEW_KEY!r})")
    if crop.status is not CropStatus.LABELED:
        raise StateError(f"crop {crop_id} is {crop.status.value}, not labeled: not reviewed")
    for old in session.scalars(select(Task).where(Task.crop_id == crop_id, Task.active.is_(True))):
        old.active = False
    session.flush()  # one active task per crop (a unique index): retire before adding
    row = _add_task(session, crop_id, round_id, slices, pushed, ls_project_id, ls_task_id)
    session.flush()
    return _task_info(row)


def open_task_crop_ids(session: Session) -> set[int]:
    """Return the crops with an active task that nobody has answered yet."""
    answered = select(Annotation.task_id).where(Annotation.current.is_(True))
    query = select(Task.crop_id).where(Task.active.is_(True), Task.id.not_in(answered))
    return set(session.scalars(query))


def labels_annotation(session: Session, crop_id: int) -> AnnotationInfo | None:
    """Return the annotation whose labels are the crop's labels in force, or None (labels
    given at import, or none)."""
    crop = session.get(Crop, crop_id)
    if crop is None:
        raise NotFoundError(f"no crop with id {crop_id} in this project")
    row = session.scalar(
        select(Annotation)
        .join(Task, Annotation.task_id == Task.id)
        .where(
            Task.crop_id == crop_id,
            Annotation.current.is_(True),
            Annotation.label_path == crop.label_path,
        )
        .order_by(Annotation.id.desc())
        .limit(1)
    )
    return None if row is None or crop.label_path is None else _annotation_info(row)


def replacing_review(session: Session, ls_task_id: int) -> tuple[TaskInfo, TaskInfo] | None:
    """Return (retired task, review task) when the task pushed as this Label Studio task was
    replaced by a review task (even one retired in turn since), or None."""
    old = session.scalar(
        select(Task)
        .where(Task.ls_task_id == ls_task_id, Task.active.is_(False))
        .order_by(Task.id.desc())
        .limit(1)
    )
    if old is None:
        return None
    newer = select(Task).where(Task.crop_id == old.crop_id, Task.id > old.id).order_by(Task.id)
    review = next((t for t in session.scalars(newer) if REVIEW_KEY in t.pushed), None)
    return None if review is None else (_task_info(old), _task_info(review))


def list_tasks(session: Session, *, active: bool | None = None) -> list[TaskInfo]:
    """Return tasks (only active or inactive ones, if asked), oldest first."""
    query = select(Task).order_by(Task.id)
    if active is not None:
        query = query.where(Task.active == active)
    return [_task_info(row) for row in session.scalars(query)]


def task_by_ls_id(session: Session, ls_task_id: int) -> TaskInfo | None:
    """Return the active task pushed as this Label Studio task, or None (a retired task's id
    may be the server's id of a newer task)."""
    row = session.scalar(select(Task).where(Task.ls_task_id == ls_task_id, Task.active.is_(True)))
    return None if row is None else _task_info(row)


def get_task(session: Session, task_id: int) -> TaskInfo:
    """Return one task, or raise NotFoundError."""
    row = session.get(Task, task_id)
    if row is None:
        raise NotFoundError(f"no task with id {task_id} in this project")
    return _task_info(row)


def current_annotation(session: Session, task_id: int) -> AnnotationInfo | None:
    """Return the annotation currently in force for a task, or None."""
    row = session.scalar(
        select(Annotation).where(Annotation.task_id == task_id, Annotation.current.is_(True))
    )
    return None if row is None else _annotation_info(row)


def annotations_since(session: Session, when: datetime) -> int:
    """Return how many annotation versions were ingested after ``when``."""
    query = select(func.count()).select_from(Annotation).where(Annotation.ingested_at > when)
    return int(session.scalar(query) or 0)


def unsure_crop_ids(session: Session) -> set[int]:
    """Return the crops whose current annotation the annotator marked unsure."""
    query = (
        select(Task.crop_id)
        .join(Annotation, Annotation.task_id == Task.id)
        .where(Annotation.current.is_(True), Annotation.status == "unsure")
    )
    return set(session.scalars(query))


def annotation_history(session: Session, task_id: int) -> list[AnnotationInfo]:
    """Return every ingested version of a task's annotations, oldest first."""
    query = select(Annotation).where(Annotation.task_id == task_id).order_by(Annotation.id)
    return [_annotation_info(row) for row in session.scalars(query)]


def record_annotation(
    session: Session,
    task_id: int,
    *,
    ls_annotation_id: int | None,
    annotator: str | None,
    lead_time: float | None,
    updated_at: datetime,
    label_path: str | None,
    was_cancelled: bool,
    round_number: int | None,
    skip_reason: str | None = None,
    status: str | None = None,
) -> tuple[AnnotationInfo, bool]:
    """Record an annotation version and move its crop to labeled or skipped.

    Returns the annotation and whether anything changed: the same version twice changes
    nothing; a newer version supersedes the crop's current ones (a review's answer those of
    the tasks it replaced), which are kept as history. A version recorded before that is
    newest again (a reviewer deleted the newer one) becomes current again in place, with the
    given details: never a second row for the same version. A skipped review leaves the labels
    it reviewed in force, and a review keeps the round its crop was labeled in.
    """
    task = session.get(Task, task_id)
    if task is None:
        raise NotFoundError(f"no task with id {task_id} in this project")
    row = session.scalar(
        select(Annotation).where(
            Annotation.task_id == task_id,
            Annotation.ls_annotation_id == ls_annotation_id,
            Annotation.updated_at == updated_at,
        )
    )
    if row is not None and row.current:
        return _annotation_info(row), False
    for old in session.scalars(
        select(Annotation)
        .join(Task, Annotation.task_id == Task.id)
        .where(Task.crop_id == task.crop_id, Annotation.current.is_(True))
    ):
        old.current = False
    if row is None:
        row = Annotation(task_id=task_id, ls_annotation_id=ls_annotation_id, updated_at=updated_at)
        session.add(row)
    row.annotator, row.lead_time, row.label_path = (
        clip(annotator, Annotation.annotator),
        lead_time,
        label_path,
    )
    row.was_cancelled, row.current, row.status = was_cancelled, True, status
    crop = session.get_one(Crop, task.crop_id)
    review = task.pushed.get(REVIEW_KEY)
    if review is not None and was_cancelled:
        _restore_reviewed(session, crop, review)
    elif review is not None:
        crop.status, crop.label_path = CropStatus.LABELED, label_path
    else:
        _settle_crop(crop, row, round_number, skip_reason)
    session.flush()
    return _annotation_info(row), True


def _restore_reviewed(session: Session, crop: Crop, review: dict[str, Any]) -> None:
    """Put the labels a review task reviewed back in force (its answer was skipped or
    withdrawn); the crop was labeled all along."""
    crop.status, crop.skip_reason, crop.label_path = CropStatus.LABELED, None, review["labels"]
    reviewed = (
        None
        if review.get("annotation") is None
        else session.get(Annotation, int(review["annotation"]))
    )
    if reviewed is not None:
        reviewed.current = True


def _settle_crop(
    crop: Crop, annotation: Annotation, round_number: int | None, skip_reason: str | None
) -> None:
    if annotation.was_cancelled:
        reason = clip(skip_reason or "skipped by annotator", Crop.skip_reason)
        crop.status, crop.skip_reason = CropStatus.SKIPPED, reason
        crop.label_path, crop.labeled_round = None, None
    else:
        crop.status, crop.skip_reason = CropStatus.LABELED, None
        crop.label_path, crop.labeled_round = annotation.label_path, round_number


COST_FIELDS = ("slices", "voxels", "repainted", "added", "removed", "split", "merged")


def record_cost(session: Session, annotation_id: int, cost: AnnotationCost) -> None:
    """Store what an annotation cost the annotator."""
    row = session.get(Annotation, annotation_id)
    if row is None:
        raise NotFoundError(f"no annotation with id {annotation_id} in this project")
    for name in COST_FIELDS:
        setattr(row, f"cost_{name}", int(getattr(cost, name)))
    session.flush()


def labeled_costs(session: Session) -> list[tuple[int | None, AnnotationCost]]:
    """Return (round the crop was labeled in, cost) of every current, measured annotation."""
    query = (
        select(Annotation, Crop.labeled_round)
        .join(Task, Annotation.task_id == Task.id)
        .join(Crop, Task.crop_id == Crop.id)
        .where(
            Annotation.current.is_(True),
            Annotation.cost_slices.is_not(None),
            Crop.status == CropStatus.LABELED,
        )
        .order_by(Annotation.id)
    )
    return [
        (labeled_round, AnnotationCost(**{n: getattr(row, f"cost_{n}") for n in COST_FIELDS}))
        for row, labeled_round in session.execute(query)
    ]


def withdraw_annotations(session: Session, task_id: int) -> bool:
    """Mark a task's Label Studio annotations withdrawn (deleted there); its crop is queued
    again, or for a review task has the labels it reviewed back in force. Labels that came
    from elsewhere (``ingest --from-file``) are not Label Studio's to withdraw and stay.
    Returns whether anything changed.
    """
    task = session.get(Task, task_id)
    if task is None:
        raise NotFoundError(f"no task with id {task_id} in this project")
    rows = list(
        session.scalars(
            select(Annotation).where(
                Annotation.task_id == task_id,
                Annotation.current.is_(True),
                Annotation.ls_annotation_id.is_not(None),
            )
        )
    )
    for row in rows:
        row.current = False
    review = task.pushed.get(REVIEW_KEY)
    if rows and review is not None:
        _restore_reviewed(session, session.get_one(Crop, task.crop_id), review)
    elif rows:
        crop = session.get_one(Crop, task.crop_id)
        crop.status, crop.label_path, crop.labeled_round, crop.skip_reason = (
            CropStatus.QUEUED,
            None,
            None,
            None,
        )
    session.flush()
    return bool(rows)


def retire_tasks(session: Session, task_ids: Sequence[int]) -> None:
    """Retire tasks whose Label Studio task was deleted there.

    A retired task is kept as history, inactive; its crop goes back to the pool (unlabeled)
    unless labels were already ingested for it: those stay.
    """
    for task_id in task_ids:
        task = session.get(Task, task_id)
        if task is None:
            raise NotFoundError(f"no task with id {task_id} in this project")
        task.active = False
        crop = session.get_one(Crop, task.crop_id)
        if crop.status is CropStatus.QUEUED:
            crop.status = CropStatus.UNLABELED
    session.flush()
