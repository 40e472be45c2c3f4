"""Ingest annotations from Label Studio (or a label file) into the pool, incrementally.

Only tasks updated since the last ingest are read (Label Studio's ``updated_at`` filter, with
the server's own timestamps). For each task the newest annotation is the one in force:

- brush regions → the crop's sparse labels: every label slice is annotated (an empty slice is
  background), the other slices (context pages too) are masked out; written to a new zarr
  per version, so an updated annotation supersedes the older one without erasing it;
- a skip (``was_cancelled``: Label Studio's Skip button; or the "skip" choice older tasks
  offered) marks the crop ``skipped``;
- no annotation left (deleted) returns the crop to ``queued``.

A review task (``push --review``) is answered the same way; its answer becomes the crop's
labels (the reviewed ones stay as history), while a skip or a deletion there leaves the
reviewed labels in force. The task it replaced is no longer ingested.

Ingesting the same state twice changes nothing. A bad annotation (unknown label, region on a
slice that was not pushed, undecodable RLE, empty result) is reported with its task and
leaves that task as it was; the other tasks still ingest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.data.importers import read_tiff_labels
from activeseg.data.ome import Placement
from activeseg.data.volumes import (
    CropLabels,
    crop_labels_key,
    read_crop_labels,
    write_crop_labels,
)
from activeseg.errors import AnnotationError, InputError, StateError
from activeseg.labelstudio.brush import results_to_instances
from activeseg.labelstudio.client import LabelStudioClient, checked_id, latest_update, parse_time
from activeseg.labelstudio.labeling import LEGACY_SKIP_CHOICE, task_status
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import TaskInfo
from activeseg.workflows.cost import record_task_cost
from activeseg.workflows.locks import hold_lock
from activeseg.workflows.project import Project
from activeseg.workflows.push import PROJECT_SETTING, SINCE_SETTING, reconcile_deleted

log = logging.getLogger(__name__)

# The status recorded for a pre-annotation submitted without a change (kept, and traceable).
UNTOUCHED = "untouched"
# Writers of labels (ingest, ingest --from-file, the simulated annotator) take turns.
LOCK = "ingest"
LOCK_WAIT_SECONDS = 600.0
# How far before the cursor each ingest reads again (Label Studio's timestamps are the server's).
REREAD_WINDOW = timedelta(minutes=10)
# Strokes drawn in the browser are anti-aliased: a pixel counts when its alpha is at least this.
ALPHA_THRESHOLD = 128
Json = dict[str, Any]


@dataclass
class IngestResult:
    """Counts of what an ingest did, and one message per task that could not be ingested."""

    ingested: int = 0
    updated: int = 0
    skipped: int = 0
    withdrawn: int = 0
    unchanged: int = 0
    deleted: int = 0  # tasks deleted in Label Studio, retired from the pool
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-able data."""
        return asdict(self)


def labels_from_results(
    results: Sequence[Mapping[str, Any]],
    slices: Sequence[int],
    shape: Sequence[int],
    *,
    task: int | str,
    allow_empty: bool,
    pages: Sequence[int] | None = None,
) -> CropLabels:
    """Return a crop's sparse labels from one annotation's results.

    ``slices``: the crop's z-indices whose labels count (the label slices); ``pages``: the
    crop z of each page the task showed (``item_index`` i is ``pages[i]``; None: the pages
    are the ``slices``). Every label slice becomes annotated, regions on other pages (context)
    are left out; ``shape``: the crop's (Z, Y, X). A voxel painted for two neurons is kept as
    an overlap (both memberships). An annotation without a single region on a label slice is
    an AnnotationError unless ``allow_empty`` (the annotator said "done": the label slices
    hold no neuron).
    """
    depth, height, width = (int(n) for n in shape)
    shown_z = list(slices) if pages is None else [int(z) for z in pages]
    keep = [i for i, z in enumerate(shown_z) if z in set(slices)]
    if len(keep) != len(set(slices)):
        raise AnnotationError(f"task {task}: label slices {list(slices)} not all among the pages")
    shown, has_regions = results_to_instances(
        results, len(shown_z), height, width, ALPHA_THRESHOLD, task=task
    )
    if not has_regions[keep].any() and not allow_empty:
        raise AnnotationError(
            f"task {task}: the annotation has no brush region on a label slice (and no 'done' "
            f"choice): nothing to ingest"
        )
    kept_z = [shown_z[i] for i in keep]
    labels = np.zeros((depth, height, width), np.uint32)
    mask = np.zeros((depth, height, width), bool)
    labels[kept_z] = shown.labels[keep]
    mask[kept_z] = True
    overlaps = shown.overlaps[np.isin(shown.overlaps[:, 0], keep)].copy()
    overlaps[:, 0] = np.asarray(shown_z, np.int64)[overlaps[:, 0]]
    return CropLabels(labels, mask, overlaps)


def newest(annotations: Sequence[Json], where: str = "task") -> Json | None:
    """Return the most recently updated annotation, or None; AnnotationError if one has no
    valid ``updated_at``."""
    return max(annotations, key=lambda a: (updated_time(a, where), a["id"]), default=None)


def updated_time(annotation: Mapping[str, Any], where: str) -> datetime:
    """Return an annotation's ``updated_at``; AnnotationError if missing or not a timestamp."""
    try:
        return parse_time(str(annotation["updated_at"]))
    except (KeyError, ValueError):
        raise AnnotationError(
            f"{where}: annotation {annotation.get('id')!r:.40} has no valid updated_at "
            f"({annotation.get('updated_at')!r:.40})"
        ) from None


def annotator_name(annotation: Mapping[str, Any]) -> str | None:
    """Return who made an annotation: an email when the server says, else the user id."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("id"))
    return None if who is None else f"user {who}"


def ingest_annotations(
    project: Project,
    *,
    round_number: int | None = None,
    client: LabelStudioClient | None = None,
) -> IngestResult:
    """Ingest what changed in Label Studio since the last ingest; see the module docstring.

    ``round_number``: the round the new labels count for (default: the newest round).
    """
    owned = client is None
    client = client or LabelStudioClient.from_env(project.root / ".env")
    try:
        with hold_lock(project.root, LOCK, wait_seconds=LOCK_WAIT_SECONDS):
            return _ingest(project, round_number, client)
    finally:
        if owned:
            client.close()


def _ingest(project: Project, round_number: int | None, client: LabelStudioClient) -> IngestResult:
    reconciled = reconcile_deleted(project, client)
    result = IngestResult(deleted=reconciled.deleted)
    with project.session() as session:
        stored = pool_settings.get_setting(session, PROJECT_SETTING)
        since = pool_settings.get_setting(session, SINCE_SETTING)
        if round_number is None:
            rounds = pool_rounds.list_rounds(session)
            round_number = rounds[-1].number if rounds else None
    if stored is None:
        return result  # nothing was ever pushed, or the Label Studio project is gone
    tasks = client.changed_tasks(int(stored), _reread_from(since))
    failed: list[Mapping[str, Any]] = []
    for task in tasks:
        try:
            outcome = ingest_task(project, task, round_number)
        except AnnotationError as exc:
            log.warning("%s", exc)
            result.errors.append(str(exc))
            failed.append(task)
            continue
        setattr(result, outcome, getattr(result, outcome) + 1)
    cursor = _next_cursor(tasks, failed)
    if cursor is not None:
        with project.session() as session:
            pool_settings.set_setting(session, SINCE_SETTING, cursor.isoformat())
    log.info("ingest: %s", result.as_dict())
    return result


def _reread_from(since: str | None) -> datetime | None:
    """Return where to read changed tasks from: the cursor less an overlap window, so a task
    that committed late, or moved across a page while being listed, is read again (ingesting
    it twice changes nothing)."""
    return None if since is None else parse_time(since) - REREAD_WINDOW


def _next_cursor(
    tasks: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]]
) -> datetime | None:
    """Return the next cursor: the newest update seen, but never past a task that failed, so
    a malformed annotation is read (and reported) again until it is fixed."""
    newest_update = latest_update(tasks)
    first_failure = min(
        (parse_time(str(t["updated_at"])) for t in failed if _has_time(t)), default=None
    )
    if first_failure is None or newest_update is None:
        return newest_update
    return min(newest_update, first_failure - timedelta(microseconds=1))


def _has_time(task: Mapping[str, Any]) -> bool:
    try:
        parse_time(str(task["updated_at"]))
    except (KeyError, ValueError):
        return False
    return True


def ingest_task(project: Project, task: Mapping[str, Any], round_number: int | None) -> str:
    """Bring one Label Studio task's annotation state into the pool; return the outcome.

    The outcome names an :class:`IngestResult` count (``ingested``, ``updated``, ...).
    """
    ls_id = checked_id(task.get("id"), "a task from Label Studio")
    with project.session() as session:
        pooled = pool_tasks.task_by_ls_id(session, ls_id)
        current = None if pooled is None else pool_tasks.current_annotation(session, pooled.id)
        replaced = None if pooled is not None else pool_tasks.replacing_review(session, ls_id)
    if replaced is not None:
        return _replaced_task(project, task, *replaced)
    if pooled is None:
        raise AnnotationError(
            f"task {ls_id}: not pushed by this project (no such task in the pool)"
        )
    # Ids are checked before use (one names the labels' file): a bad one fails this task only.
    annotations = [
        dict(a, id=checked_id(a.get("id"), f"task {ls_id}: an annotation"))
        for a in task.get("annotations") or []
    ]
    annotation = newest(annotations, f"task {ls_id}")
    if annotation is None:
        with project.session() as session:
            return (
                "withdrawn" if pool_tasks.withdraw_annotations(session, pooled.id) else "unchanged"
            )
    updated_at = updated_time(annotation, f"task {ls_id}")
    if current is not None and (current.ls_annotation_id, current.updated_at) == (
        annotation["id"],
        updated_at,
    ):
        return "unchanged"
    results = annotation.get("result") or []
    if not isinstance(results, list):
        raise AnnotationError(f"task {ls_id}: the annotation's result is not a list of regions")
    status = task_status(results)
    skipped = bool(annotation.get("was_cancelled")) or status == LEGACY_SKIP_CHOICE
    label_path = None if skipped else _write_labels(project, pooled, annotation, ls_id)
    lead_time = annotation.get("lead_time")
    with project.session() as session:
        recorded, _ = pool_tasks.record_annotation(
            session,
            pooled.id,
            ls_annotation_id=int(annotation["id"]),
            annotator=annotator_name(annotation),
            lead_time=None if lead_time is None else float(lead_time),
            updated_at=updated_at,
            label_path=label_path,
            was_cancelled=skipped,
            round_number=round_number,
            skip_reason=_skip_reason(annotation, status) if skipped else None,
            status=UNTOUCHED if status != "unsure" and untouched(annotation, task) else status,
        )
    if skipped:
        return "skipped"
    if label_path is not None:  # what it cost the annotator, against the pre-annotation
        labels = read_crop_labels(project.resolve(label_path)).labels
        record_task_cost(project, pooled, recorded.id, labels)
    return "ingested" if current is None or current.was_cancelled else "updated"


def _replaced_task(
    project: Project, task: Mapping[str, Any], retired: TaskInfo, review: TaskInfo
) -> str:
    """Return "unchanged" for a task a review task replaced, warning when it holds an
    annotation the pool does not have: edits there no longer count."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
    with project.session() as session:
        known = {(a.ls_annotation_id, a.updated_at)
                 for a in pool_tasks.annotation_history(session, retired.id)}  # fmt: skip
    where = f"task {retired.ls_task_id}"
    if any(not _has_time(a) or (a.get("id"), updated_time(a, where)) not in known
           for a in annotations):  # fmt: skip
        log.warning(
            "%s (crop %d) was replaced by the review task %s: its new annotation is not "
            "ingested; make the change in the review task",
            where,
            review.crop_id,
            review.ls_task_id,
        )
    return "unchanged"


def _write_labels(
    project: Project, pooled: TaskInfo, annotation: Mapping[str, Any], ls_id: int
) -> str:
    """Return the pool path of an annotation's labels, written as a new version for its crop."""
    results = list(annotation.get("result") or [])
    labels = labels_from_results(
        results,
        pooled.slices,
        pooled.pushed.get("shape") or _crop_shape(project, pooled),
        task=f"{ls_id} (crop {pooled.crop_id}, annotation {annotation['id']})",
        allow_empty=task_status(results) == "done",
        pages=pooled.pushed.get("pages"),
    )
    stamp = parse_time(str(annotation["updated_at"])).strftime("%Y%m%dT%H%M%S%f")
    path = project.crop_label_path(pooled.crop_id, f"ls-{annotation['id']}-{stamp}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_crop_labels(path, labels, crop_placement(project, pooled.crop_id))
    return project.relative(path)


def untouched(annotation: Mapping[str, Any], task: Mapping[str, Any]) -> bool:
    """Return whether an annotation's brush regions are exactly one of the task's
    pre-annotations: submitted as the model drew it, without a stroke."""
    drawn = _brush_regions(annotation.get("result"))
    predictions = task.get("predictions") or []
    return bool(drawn) and any(
        drawn == _brush_regions(p.get("result")) for p in predictions if isinstance(p, Mapping)
    )


def _brush_regions(results: Any) -> list[tuple[Any, ...]]:
    """Return the brush regions of results as sorted (page, labels, RLE) tuples."""
    if not isinstance(results, list):
        return []
    regions = []
    for result in results:
        value = result.get("value") if isinstance(result, Mapping) else None
        if isinstance(value, Mapping) and "brushlabels" in value:
            labels, rle = value.get("brushlabels") or [], value.get("rle") or []
            regions.append((result.get("item_index"), tuple(map(str, labels)), tuple(rle)))
    return sorted(regions, key=repr)


def _skip_reason(annotation: Mapping[str, Any], status: str | None) -> str:
    who = annotator_name(annotation) or "the annotator"
    how = "chose 'skip'" if status == LEGACY_SKIP_CHOICE else "skipped the task"
    return f"{who} {how} in Label Studio (annotation {annotation['id']})"


def crop_placement(project: Project, crop_id: int) -> Placement:
    """Return where a crop lies in its volume (origin, voxel size), for its labels' metadata."""
    with project.session() as session:
        crop = pool_volumes.get_crop(session, crop_id)
        volume = pool_volumes.get_volume(session, crop.volume_name)
    return Placement(volume.voxel_size, crop.origin)


def _crop_shape(project: Project, task: TaskInfo) -> tuple[int, int, int]:
    with project.session() as session:
        return pool_volumes.get_crop(session, task.crop_id).shape


def ingest_file(
    project: Project, crop_id: int, path: Path, *, round_number: int | None = None
) -> str:
    """Ingest labels made in another tool (napari, VVD) for one crop; return the outcome.

    ``path``: a zarr holding either a crop label group (``0`` or ``labels``, ``mask``,
    ``overlaps``, as activeseg writes them; an OME label image) or a single integer (Z, Y, X)
    array, or a label TIFF (what napari saves from a Labels layer); a file without a mask is
    taken as fully annotated. Its shape must be the crop's. The labels are copied into the project.
    """
    with hold_lock(project.root, LOCK, wait_seconds=LOCK_WAIT_SECONDS):
        return _ingest_file(project, crop_id, path, round_number)


def _ingest_file(project: Project, crop_id: int, path: Path, round_number: int | None) -> str:
    with project.session() as session:
        crop = pool_volumes.get_crop(session, crop_id)
        active = [t for t in pool_tasks.list_tasks(session, active=True) if t.crop_id == crop_id]
    if not active and crop.status != "unlabeled":
        raise StateError(f"crop {crop_id} is {crop.status} and has no open task")
    labels = _read_label_file(path, crop.shape)
    annotated = [int(z) for z in np.flatnonzero(labels.mask.any(axis=(1, 2)))]
    now = datetime.now(UTC)
    copy = project.crop_label_path(crop_id, f"file-{now:%Y%m%dT%H%M%S%f}")
    copy.parent.mkdir(parents=True, exist_ok=True)
    write_crop_labels(copy, labels, crop_placement(project, crop_id))
    with project.session() as session:
        if active:
            task_id = active[0].id
        else:
            if crop.status != "unlabeled":
                raise StateError(
                    f"crop {crop_id} is {crop.status} with no open task: not relabeled"
                )
            task_id = pool_tasks.queue_crop(
                session, crop_id, round_id=None, slices=annotated, pushed={"source": "file"}
            ).id
        had = pool_tasks.current_annotation(session, task_id)
        pool_tasks.record_annotation(
            session,
            task_id,
            ls_annotation_id=None,
            annotator=f"file {path.name}",
            lead_time=None,
            updated_at=now,
            label_path=project.relative(copy),
            was_cancelled=False,
            round_number=round_number,
        )
    return "ingested" if had is None else "updated"


def _read_label_file(path: Path, shape: tuple[int, int, int]) -> CropLabels:
    where = str(path)
    if path.suffix.lower() in (".tif", ".tiff"):  # napari saves a Labels layer as TIFF
        return _whole_labels(read_tiff_labels(path), shape, where)
    try:
        node = zarr.open(path, mode="r")
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{where}: not a readable zarr ({exc})") from exc
    if isinstance(node, zarr.Group):
        if crop_labels_key(node) not in node:
            raise InputError(f"{where}: the group holds no label array ('0' or 'labels')")
        if "mask" not in node:  # an OME label image made elsewhere: labels of the whole crop
            image = cast(zarr.Array, node[crop_labels_key(node)])
            return _whole_labels(np.asarray(image[...]), shape, where)
        for key in (crop_labels_key(node), "mask", "overlaps"):
            stored = node.get(key)
            if isinstance(stored, zarr.Array):
                _check_stored(np.asarray(stored[...]), key, where)
        labels = read_crop_labels(path)
        _check_overlaps(labels.overlaps, shape, where)
    else:
        return _whole_labels(np.asarray(node[...]), shape, where)
    return _checked(labels, shape, where)


def _whole_labels(data: npt.NDArray[Any], shape: tuple[int, int, int], where: str) -> CropLabels:
    """Return a label image made in another tool as labels of the whole crop."""
    _check_labels(data, where)
    labels = CropLabels(
        data.astype(np.uint32), np.ones(data.shape, bool), np.zeros((0, 4), np.int64)
    )
    return _checked(labels, shape, where)


def _checked(labels: CropLabels, shape: tuple[int, int, int], where: str) -> CropLabels:
    _check_labels(labels.labels, where)
    if labels.labels.shape != shape or labels.mask.shape != shape:
        raise InputError(
            f"{where}: labels of shape {labels.labels.shape}, but the crop is {shape} (Z, Y, X)"
        )
    if not labels.mask.any():
        raise InputError(f"{where}: the mask marks no voxel as annotated")
    return labels


MAX_ID = int(np.iinfo(np.uint32).max)


def _check_labels(data: npt.NDArray[Any], where: str) -> None:
    if not np.issubdtype(data.dtype, np.integer) or data.ndim != 3:
        raise InputError(
            f"{where}: labels must be a (Z, Y, X) integer array, got {data.dtype} {data.shape}"
        )
    if data.size and (data.min() < 0 or data.max() > MAX_ID):
        raise InputError(
            f"{where}: label ids must lie in 0..{MAX_ID}, found {data.min()}..{data.max()}"
        )


def _check_stored(data: npt.NDArray[Any], key: str, where: str) -> None:
    """Refuse a stored array whose values would change when read as the crop label types."""
    if key == "mask":
        if data.dtype != bool and not (np.issubdtype(data.dtype, np.integer) and
                                       np.isin(data, (0, 1)).all()):  # fmt: skip
            raise InputError(f"{where}: 'mask' must be boolean (or 0/1), got {data.dtype}")
    elif key in ("0", "labels"):
        _check_labels(data, f"{where}: 'labels'")
    elif not np.issubdtype(data.dtype, np.integer) or data.ndim != 2 or data.shape[1] != 4:
        raise InputError(
            f"{where}: 'overlaps' must be (K, 4) integer rows (z, y, x, id), got "
            f"{data.dtype} {data.shape}"
        )


def _check_overlaps(rows: npt.NDArray[np.int64], shape: tuple[int, int, int], where: str) -> None:
    """Refuse overlap rows outside the crop or with an id that is not a neuron's."""
    inside = (rows[:, :3] >= 0) & (rows[:, :3] < np.asarray(shape))
    if len(rows) and not (inside.all() and (rows[:, 3] >= 1).all() and rows[:, 3].max() <= MAX_ID):
        bad = rows[~(inside.all(axis=1) & (rows[:, 3] >= 1) & (rows[:, 3] <= MAX_ID))][0]
        raise InputError(
            f"{where}: overlap row (z, y, x, id) = {tuple(int(v) for v in bad)} lies outside "
            f"the crop {shape} or names no neuron"
        )
