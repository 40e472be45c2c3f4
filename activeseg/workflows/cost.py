"""What an answered task cost its annotator, recorded with the annotation.

The simulated annotator and the Label Studio ingest both record it: the task's shown slices,
its pre-annotation (the model's instances pushed with it, when the round kept them; the stored
labels a review task showed) against the labels submitted on those slices
(:func:`activeseg.core.effort.annotation_effort`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from activeseg.core.effort import annotation_effort
from activeseg.data.volumes import read_crop_labels
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool.records import AnnotationCost, TaskInfo
from activeseg.pool.tasks import REVIEW_KEY
from activeseg.workflows.project import Project
from activeseg.workflows.score import analysis_path, read_analysis


def pre_annotation(project: Project, task: TaskInfo) -> npt.NDArray[np.uint32] | None:
    """Return the model's instances on a task's shown slices (what was pushed), or None; for
    a review task the stored labels it showed."""
    review = task.pushed.get(REVIEW_KEY)
    if review is not None:
        return read_crop_labels(project.resolve(review["labels"])).labels[list(task.slices)]
    if task.round_id is None:
        return None
    with project.session() as session:
        number = next(r.number for r in pool_rounds.list_rounds(session) if r.id == task.round_id)
    path = analysis_path(project, number, task.crop_id)
    if not path.exists():
        return None
    return read_analysis(path, "consensus")[list(task.slices)].astype(np.uint32)


def task_cost(
    predicted: npt.NDArray[np.integer] | None, shown: npt.NDArray[np.integer]
) -> AnnotationCost:
    """Return what answering a task cost: its pre-annotation (None: none) against the labels
    submitted on its shown slices, both (S, Y, X)."""
    return annotation_effort(predicted, shown)


def record_task_cost(
    project: Project, task: TaskInfo, annotation_id: int, labels: npt.NDArray[np.integer]
) -> AnnotationCost:
    """Measure and store what an annotation of ``task`` cost; labels: the crop's (Z, Y, X)."""
    cost = task_cost(pre_annotation(project, task), labels[list(task.slices)])
    with project.session() as session:
        pool_tasks.record_cost(session, annotation_id, cost)
    return cost
