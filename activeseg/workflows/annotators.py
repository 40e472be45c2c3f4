"""Who answers a round's tasks, behind one interface; and the simulated annotator itself.

An :class:`Annotator` gets the round's selected crops (``push``) and brings back what was
answered (``collect``). ``loop.annotator`` in the config names one:

- ``labelstudio``: tasks in Label Studio, annotations ingested from it;
- ``simulated``: answers from hidden ground truth, as a person would. It sees the same
  z-slices a person sees in Label Studio and gives the same sparse labels: every neuron on
  those slices, nothing elsewhere. Optional noise imitates a hurried annotator (small
  fragments dropped, boundaries a voxel off);
- ``file``: crops queued in the pool only, labelled in another tool (napari) and brought in
  with ``activeseg ingest --from-file``; the round collects nothing itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from activeseg.core.effort import repainted_voxels
from activeseg.core.instances import Instances
from activeseg.data.ome import Placement
from activeseg.data.volumes import CropLabels, read_ground_truth, write_crop_labels
from activeseg.errors import ConfigError, StateError
from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.labeling import status_result
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, TaskInfo, VolumeInfo
from activeseg.workflows.cost import pre_annotation, task_cost
from activeseg.workflows.ingest import LOCK as INGEST_LOCK
from activeseg.workflows.ingest import LOCK_WAIT_SECONDS, ingest_annotations
from activeseg.workflows.locks import hold_lock
from activeseg.workflows.project import Project
from activeseg.workflows.push import page_results, push_selected, relabel_shown
from activeseg.workflows.score import plan_slices, selected_crops
from activeseg.workflows.stages import CorrectionEffort, IngestOutput, PushOutput, RoundContext

log = logging.getLogger(__name__)

ANNOTATOR = "simulated"
FILE_ANNOTATOR = "file"


@dataclass(frozen=True)
class AnnotatorNoise:
    """How careless the simulated annotator is (all off by default).

    The defaults of ``loop.noise`` in the config; benchmarks use :data:`REALISTIC`.
    """

    drop_below: int = 0  # instance fragments smaller than this (voxels per slice) are missed
    jitter: float = 0.0  # probability that a fragment's boundary is eroded or dilated by 1
    merge: float = 0.0  # probability that two touching neurons are labeled as one

    @property
    def active(self) -> bool:
        """Return whether any noise is on."""
        return self.drop_below > 0 or self.jitter > 0 or self.merge > 0


# A hurried annotator: thin branches (fragments under 6 voxels on a slice) missed, a third of
# the boundaries a voxel off, one in ten touching pairs merged.
REALISTIC = AnnotatorNoise(drop_below=6, jitter=0.3, merge=0.1)


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
    noisy = noise is not None and noise.active
    for z in slices:
        labels[z] = _annotate_slice(truth.labels[z], noise, rng) if noisy else truth.labels[z]
        mask[z] = True
    if noise is not None and noise.merge > 0:
        labels = _merge_touching(labels, slices, noise.merge, rng)
    on_slices = np.isin(truth.overlaps[:, 0], np.asarray(slices, dtype=np.int64))
    rows = truth.overlaps[on_slices]
    kept = labels[rows[:, 0], rows[:, 1], rows[:, 2]] > 0
    return CropLabels(labels, mask, rows[kept])


def _annotate_slice(
    truth: npt.NDArray[np.uint32], noise: AnnotatorNoise | None, rng: np.random.Generator
) -> npt.NDArray[np.uint32]:
    out = np.zeros_like(truth)
    if noise is None:
        return truth.copy()
    for instance_id in np.unique(truth[truth > 0]):
        region = truth == instance_id
        if region.sum() < noise.drop_below:
            continue
        if rng.random() < noise.jitter:
            grow = rng.random() < 0.5
            region = ndimage.binary_dilation(region) if grow else ndimage.binary_erosion(region)
        out[region & (out == 0)] = instance_id
    return out


def touching_pairs(labels: npt.NDArray[np.uint32], slices: Sequence[int]) -> set[tuple[int, int]]:
    """Return the pairs (a < b) of instance ids that touch in y or x on the given slices."""
    pairs: set[tuple[int, int]] = set()
    for z in slices:
        plane = labels[z]
        for a, b in ((plane[1:], plane[:-1]), (plane[:, 1:], plane[:, :-1])):
            touch = (a > 0) & (b > 0) & (a != b)
            lo, hi = np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])
            pairs.update(zip(lo.tolist(), hi.tolist(), strict=True))
    return pairs


def _merge_touching(
    labels: npt.NDArray[np.uint32], slices: Sequence[int], rate: float, rng: np.random.Generator
) -> npt.NDArray[np.uint32]:
    """Label each touching pair as one neuron with probability ``rate`` (on every slice)."""
    target = np.arange(int(labels.max()) + 1, dtype=np.uint32)
    for a, b in sorted(touching_pairs(labels, slices)):
        if rng.random() < rate:
            root_a, root_b = _root(target, a), _root(target, b)
            target[max(root_a, root_b)] = min(root_a, root_b)
    for k in range(len(target)):
        target[k] = _root(target, k)
    return target[labels]


def _root(target: npt.NDArray[np.uint32], k: int) -> int:
    while target[k] != k:
        k = int(target[k])
    return k


def correction_effort(predicted: npt.NDArray[np.uint32], truth: npt.NDArray[np.uint32]) -> int:
    """Return the voxels an annotator must repaint to turn a pre-annotation into the truth."""
    return repainted_voxels(predicted, truth)


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


def answer_open_tasks(
    project: Project,
    round_number: int | None,
    noise: AnnotatorNoise | None = None,
) -> IngestOutput:
    """Answer every queued task of the pool from ground truth, straight into the pool.

    Returns how many were answered and the mean correction effort: the voxels per crop the
    annotator had to repaint on the shown slices, and their fraction of the shown voxels,
    over the tasks that came with a pre-annotation (None when none did).
    """
    with hold_lock(project.root, INGEST_LOCK, wait_seconds=LOCK_WAIT_SECONDS):
        return _answer_open_tasks(project, round_number, noise)


def _answer_open_tasks(
    project: Project, round_number: int | None, noise: AnnotatorNoise | None
) -> IngestOutput:
    open_tasks = _open_tasks(project)
    efforts: list[tuple[int, int]] = []
    for task, crop, volume in open_tasks:
        truth = read_ground_truth(project.resolve(volume.path), crop.box)
        labels = sparse_labels(truth, task.slices, noise, seed=task.id)
        predicted = pre_annotation(project, task)
        cost = task_cost(predicted, labels.labels[list(task.slices)])
        if predicted is not None:
            efforts.append((cost.repainted, cost.voxels))
        now = datetime.now(UTC)
        path = project.crop_label_path(crop.id, f"simulated-task{task.id}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_crop_labels(path, labels, Placement(volume.voxel_size, crop.origin))
        with project.session() as session:
            answer, _ = pool_tasks.record_annotation(
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
            pool_tasks.record_cost(session, answer.id, cost)
    log.info("simulated annotator answered %d tasks", len(open_tasks))
    return IngestOutput(ingested=len(open_tasks), correction=_mean_effort(efforts))


def _mean_effort(efforts: Sequence[tuple[int, int]]) -> CorrectionEffort:
    """Return the mean repainted voxels and fraction over (voxels, shown voxels) pairs."""
    if not efforts:
        return CorrectionEffort()
    voxels = float(np.mean([v for v, _ in efforts]))
    return CorrectionEffort(voxels, float(np.mean([v / n for v, n in efforts])))


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
        shown, mapping = relabel_shown(labels.labels[list(task.slices)], max_instances)
        overlaps = shown_overlaps(labels.overlaps, task.slices, mapping)
        pages = task.pushed.get("pages") or list(task.slices)
        drawn = instances_to_results(shown, overlaps=overlaps)
        regions = page_results(drawn, task.slices, pages, crop.origin[0])
        result = [*regions, status_result("done")]
        client.create_annotation(task.ls_task_id, result)
        answered += 1
    log.info("simulated annotator answered %d tasks in Label Studio", answered)
    return answered


def shown_overlaps(
    rows: npt.NDArray[np.int64], slices: Sequence[int], mapping: dict[int, int]
) -> npt.NDArray[np.int64]:
    """Return overlap rows ``(z, y, x, id)`` of a crop as rows of the shown slices: slice
    index in ``slices`` and the shown label (``mapping``: {shown id: crop id}); neurons left
    out of the shown labels are left out here too."""
    index = {int(z): i for i, z in enumerate(slices)}
    shown = {old: new for new, old in mapping.items()}
    kept = [(index[int(z)], y, x, shown[int(i)]) for z, y, x, i in rows
            if int(z) in index and int(i) in shown]  # fmt: skip
    return np.asarray(kept, np.int64).reshape(-1, 4)


class Annotator(Protocol):
    """Who answers a round's tasks: gets the selected crops, brings back the answers."""

    def push(self, context: RoundContext) -> PushOutput:
        """Hand the round's selected crops to the annotator; return how many went."""
        ...

    def collect(self, context: RoundContext) -> IngestOutput:
        """Bring the answers given since the last collect into the pool; return the counts."""
        ...


class LabelStudioAnnotator:
    """People in Label Studio: tasks pushed to its project, annotations ingested from it."""

    def push(self, context: RoundContext) -> PushOutput:
        """Push the selected crops as pre-annotated tasks; return the Label Studio push."""
        result = push_selected(context.project, context.round)
        return PushOutput(result.pushed, result.project_id, result.recovered, tuple(result.tasks))

    def collect(self, context: RoundContext) -> IngestOutput:
        """Ingest what changed in Label Studio since the last ingest; return the counts."""
        result = ingest_annotations(context.project, round_number=context.round.number)
        return IngestOutput(
            ingested=result.ingested,
            updated=result.updated,
            skipped=result.skipped,
            withdrawn=result.withdrawn,
            unchanged=result.unchanged,
            deleted=result.deleted,
            errors=tuple(result.errors),
        )


@dataclass(frozen=True)
class SimulatedAnnotator:
    """Answers from the volumes' hidden ground truth, in the pool (no Label Studio)."""

    noise: AnnotatorNoise | None = None

    def push(self, context: RoundContext) -> PushOutput:
        """Queue the selected crops as pool-only tasks; return how many."""
        return PushOutput(queue_selected(context, ANNOTATOR))

    def collect(self, context: RoundContext) -> IngestOutput:
        """Answer every open task from ground truth; return the count and correction effort."""
        return answer_open_tasks(context.project, context.round.number, self.noise)


class FileAnnotator:
    """Labels made in another tool (napari) and ingested with ``ingest --from-file``."""

    def push(self, context: RoundContext) -> PushOutput:
        """Queue the selected crops as pool-only tasks to label from files; return how many."""
        return PushOutput(queue_selected(context, FILE_ANNOTATOR))

    def collect(self, context: RoundContext) -> IngestOutput:
        """Return no answers: label files come in through ``activeseg ingest --from-file``."""
        log.info("file annotator: labels come in with `activeseg ingest --from-file`")
        return IngestOutput()


def annotator_for(project: Project) -> Annotator:
    """Return the annotator that ``loop.annotator`` in the project's config names."""
    name = project.config.loop.annotator
    if name == "labelstudio":
        return LabelStudioAnnotator()
    if name == ANNOTATOR:
        return SimulatedAnnotator(AnnotatorNoise(**project.config.loop.noise.model_dump()))
    if name == FILE_ANNOTATOR:
        return FileAnnotator()
    raise ConfigError(
        f"loop.annotator must be labelstudio, {ANNOTATOR} or {FILE_ANNOTATOR}; got {name!r}"
    )


def queue_selected(context: RoundContext, annotator: str) -> int:
    """Queue the round's selected crops as pool-only tasks for ``annotator``; return how many."""
    project, current = context.project, context.round
    crops = selected_crops(project, current.id)
    for crop in crops:
        slices, reason = plan_slices(project, current.number, crop)
        with project.session() as session:
            pool_tasks.queue_crop(
                session,
                crop.id,
                round_id=current.id,
                slices=slices,
                pushed={"reason": reason, "annotator": annotator},
            )
    return len(crops)
