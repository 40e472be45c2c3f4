"""The simulated annotator: answers tasks from hidden ground truth, as a person would.

It sees the same z-slices a person sees in Label Studio and gives the same sparse labels:
every neuron on those slices, nothing elsewhere. Optional noise imitates a hurried annotator
(small fragments dropped, boundaries a voxel off).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from activeseg.core.instances import Instances
from activeseg.data.volumes import CropLabels, read_ground_truth, write_crop_labels
from activeseg.errors import StateError
from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.labeling import status_result
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, TaskInfo, VolumeInfo
from activeseg.workflows.project import Project
from activeseg.workflows.push import page_results, relabel_shown
from activeseg.workflows.score import analysis_path, read_analysis

log = logging.getLogger(__name__)

ANNOTATOR = "simulated"


@dataclass(frozen=True)
class AnnotatorNoise:
    """How careless the simulated annotator is (all off by default)."""

    drop_below: int = 0  # instance fragments smaller than this (voxels per slice) are missed
    jitter: float = 0.0  # probability that a fragment's boundary is eroded or dilated by 1


def sparse_labels(
    truth: Instances,
    slices: Sequence[int],
    noise: AnnotatorNoise | None = None,
    seed: int = 0,
) -> CropLabels:
    """Return what an annotator labels: the truth on the given z-slices, masked elsewhere.

    truth: instances of one crop, (Z, Y, X). slices: z indices into the crop.
    """
    labels = np.zeros(truth.shape, np.uint32)
    mask = np.zeros(truth.shape, bool)
    rng = np.random.default_rng(seed)
    for z in slices:
        labels[z] = _annotate_slice(truth.labels[z], noise, rng) if noise else truth.labels[z]
        mask[z] = True
    on_slices = np.isin(truth.overlaps[:, 0], np.asarray(slices, dtype=np.int64))
    rows = truth.overlaps[on_slices]
    kept = labels[rows[:, 0], rows[:, 1], rows[:, 2]] > 0
    return CropLabels(labels, mask, rows[kept])


def _annotate_slice(
    truth: npt.NDArray[np.uint32], noise: AnnotatorNoise, rng: np.random.Generator
) -> npt.NDArray[np.uint32]:
    out = np.zeros_like(truth)
    for instance_id in np.unique(truth[truth > 0]):
        region = truth == instance_id
        if region.sum() < noise.drop_below:
            continue
        if rng.random() < noise.jitter:
            grow = rng.random() < 0.5
            region = ndimage.binary_dilation(region) if grow else ndimage.binary_erosion(region)
        out[region & (out == 0)] = instance_id
    return out


def correction_effort(predicted: npt.NDArray[np.uint32], truth: npt.NDArray[np.uint32]) -> int:
    """Return the voxels an annotator must repaint to turn a pre-annotation into the truth.

    Both (…, Y, X) label arrays of the shown slices. Each predicted id is matched to the true
    id it overlaps most; voxels whose matched id differs from the truth need a correction.
    """
    mapping = np.zeros(int(predicted.max()) + 1, np.int64)
    fg = predicted > 0
    if fg.any():
        pairs, counts = np.unique(np.stack([predicted[fg], truth[fg]]), axis=1, return_counts=True)
        for (p, t), _ in sorted(zip(pairs.T.tolist(), counts, strict=True), key=lambda x: x[1]):
            mapping[p] = t
    return int((mapping[predicted] != truth).sum())


def _open_tasks(project: Project) -> list[tuple[TaskInfo, CropInfo, VolumeInfo]]:
    """Return the active tasks without an answer, with their crops and volumes."""
    with project.session() as session:
        open_tasks = [
            t
            for t in pool_tasks.list_tasks(session, active=True)
            if pool_tasks.current_annotation(session, t.id) is None
        ]
        crops = {t.id: pool_volumes.get_crop(session, t.crop_id) for t in open_tasks}
        volumes = {v.id: v for v in pool_volumes.list_volumes(session)}
    found = []
    for task in open_tasks:
        crop = crops[task.id]
        volume = volumes[crop.volume_id]
        if not volume.has_ground_truth:
            raise StateError(
                f"task {task.id} (crop {crop.id}): volume {volume.name} has no ground truth "
                f"for the simulated annotator"
            )
        found.append((task, crop, volume))
    return found


def pre_annotation(project: Project, task: TaskInfo) -> npt.NDArray[np.uint32] | None:
    """Return the model's instances on a task's shown slices (what was pushed), or None."""
    if task.round_id is None:
        return None
    with project.session() as session:
        number = next(r.number for r in pool_rounds.list_rounds(session) if r.id == task.round_id)
    path = analysis_path(project, number, task.crop_id)
    if not path.exists():
        return None
    return read_analysis(path, "consensus")[list(task.slices)].astype(np.uint32)


def answer_open_tasks(
    project: Project,
    round_number: int | None,
    noise: AnnotatorNoise | None = None,
) -> dict[str, Any]:
    """Answer every queued task of the pool from ground truth, straight into the pool.

    Returns how many were answered and the mean correction effort: the voxels per crop the
    annotator had to repaint on the shown slices, and their fraction of the shown voxels,
    over the tasks that came with a pre-annotation (None when none did).
    """
    open_tasks = _open_tasks(project)
    efforts: list[tuple[int, int]] = []
    for task, crop, volume in open_tasks:
        truth = read_ground_truth(project.resolve(volume.path), crop.box)
        labels = sparse_labels(truth, task.slices, noise, seed=task.id)
        predicted = pre_annotation(project, task)
        if predicted is not None:
            shown = labels.labels[list(task.slices)]
            efforts.append((correction_effort(predicted, shown), shown.size))
        now = datetime.now(UTC)
        path = project.crop_label_path(crop.id, f"simulated-task{task.id}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_crop_labels(path, labels)
        with project.session() as session:
            pool_tasks.record_annotation(
                session,
                task.id,
                ls_annotation_id=None,
                annotator=ANNOTATOR,
                lead_time=None,
                updated_at=now,
                label_path=project.relative(path),
                was_cancelled=False,
                round_number=round_number,
            )
    log.info("simulated annotator answered %d tasks", len(open_tasks))
    voxels = [v for v, _ in efforts]
    return {
        "ingested": len(open_tasks),
        "correction_voxels": float(np.mean(voxels)) if efforts else None,
        "correction_fraction": float(np.mean([v / n for v, n in efforts])) if efforts else None,
    }


def answer_in_labelstudio(
    project: Project, client: LabelStudioClient, noise: AnnotatorNoise | None = None
) -> int:
    """Annotate every open pushed task through the Label Studio API, as a person would.

    The truth on the task's label slices becomes brush regions on their pages (one label per
    neuron, kept across slices) with the status "done". A task that already has an annotation
    in Label Studio (answered before a crash, not ingested yet) is left alone. Returns how
    many were answered.
    """
    answered = 0
    max_instances = project.config.labelstudio.max_instances
    for task, crop, volume in _open_tasks(project):
        if task.ls_task_id is None or client.get_task(task.ls_task_id).get("annotations"):
            continue
        truth = read_ground_truth(project.resolve(volume.path), crop.box)
        labels = sparse_labels(truth, task.slices, noise, seed=task.id)
        shown, _ = relabel_shown(labels.labels[list(task.slices)], max_instances)
        pages = task.pushed.get("pages") or list(task.slices)
        regions = page_results(instances_to_results(shown), task.slices, pages, crop.origin[0])
        result = [*regions, status_result("done")]
        client.create_annotation(task.ls_task_id, result)
        answered += 1
    log.info("simulated annotator answered %d tasks in Label Studio", answered)
    return answered
