"""Push a round's selected crops to Label Studio as tasks with the model's neurons and doubts.

One task per crop, in one numbering (the absolute z of the volume) everywhere: page corners,
caption, region ids and the Data Manager. A task pages through the crop's z-slices (all of
them by default, ``CONTEXT_SLICES``); the *label pages* (the slices where the model is most
unsure; in round 0 evenly spaced ones) are the only slices whose labels are kept
(``task.slices``), the others are context to follow a neurite up and down. The pages start
on the label page with the most flagged neurons and go up in z; the slices below it follow.
The model's doubts are drawn into the pages (corner marks, on a fixed scale); beside them a
still overview (top and side projections, label slices marked, the doubt's side view with its
legend) and a napari command line that opens the crop in 3-D there. The model's instances on
the label pages are a brush pre-annotation whose ``score`` is the crop's priority in [0, 1]
(1 = ranked first; the default Data Manager view sorts by it), and the task offers only the
brush labels its crop needs plus a few spare.

A *review task* (:func:`push_reviews`) shows a labeled crop again, the same way, with its
stored labels instead of the model's: the slices they were painted on are the label pages, a
voxel in two neurons is in both regions, and it replaces the crop's earlier task in the pool.

The push is safe to re-run. Images go up first (an orphaned upload is harmless); tasks are
imported with their predictions inline in one call per batch, so a task never lacks its
pre-annotation; and the pool records the tasks and marks the crops ``queued`` in one
transaction. A push that dies between the import and that transaction leaves tasks in Label
Studio that the pool does not know: the next push finds them by crop and round in their data
and records them instead of importing them again.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.data.volumes import RAW_PATH, CropLabels, read_crop_labels, read_raw
from activeseg.errors import InputError, LabelStudioError, StateError
from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import LabelStudioClient, checked_id, chunks
from activeseg.labelstudio.labeling import (
    CAPTION_KEY,
    IMAGES_KEY,
    LABELS_KEY,
    NAPARI_KEY,
    OVERVIEW_KEY,
    instance_label,
    labeling_config,
    offered_labels,
)
from activeseg.labelstudio.render import (
    channel_limits,
    data_uri,
    doubt_marks,
    overview_image,
    page_tag,
    png_bytes,
    render_rgb,
)
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, RoundInfo, VolumeInfo
from activeseg.pool.tasks import REVIEW_KEY
from activeseg.workflows.project import Project
from activeseg.workflows.score import (
    analysis_path,
    plan_slices,
    read_analysis,
    read_instance_risks,
    selected_crops,
)

log = logging.getLogger(__name__)

PROJECT_SETTING = "labelstudio.project_id"
SERVER_SETTING = "labelstudio.server"
# The ingest cursor: the newest task update ingested (the server's time).
SINCE_SETTING = "labelstudio.ingested_until"
TASKS_PER_IMPORT = 100
FLAG_NOTES = {
    "split": "may be split (part of a neuron)",
    "merge": "may be merged (several neurons)",
    "unstable": "unstable across samples",
}
# Context pages on each side of the label slices (the block is clipped to the crop); None:
# every slice of the crop (crops are 16-32 slices deep: a neuron can be followed through all).
CONTEXT_SLICES: int | None = None
# Brush labels offered beyond the pre-annotated neurons, and in round 0 (no model) in all.
SPARE_LABELS = 4
ROUND0_LABELS = 8
# The doubt scale's top in bits of mutual information (at most 1 bit for a yes/no voxel),
# unless labelstudio.overlay_vmax says otherwise: fixed, so marks compare across tasks.
DOUBT_VMAX = 0.5
# Voxels around the crop in y and x that the napari command line also opens.
NAPARI_MARGIN = 16
# Task data the Data Manager should not show as columns (images, long text).
HIDDEN_DATA = (IMAGES_KEY, OVERVIEW_KEY, LABELS_KEY, NAPARI_KEY, CAPTION_KEY, "flagged")
# A review task's pre-annotation is the crop's stored labels; its data names them.
REVIEW_VERSION = "stored labels"
REVIEW_OF = "review_of"
Json = dict[str, Any]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PushResult:
    """What a push did: the Label Studio project and the tasks it created or recovered."""

    project_id: int
    pushed: int
    recovered: int = 0
    tasks: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-able data."""
        return asdict(self)


@dataclass(frozen=True)
class CropTask:
    """One crop rendered as a task: page and overview images by name, data, pre-annotation.

    ``slices``: the label slices (crop z) whose labels ingest keeps; ``pages``: the crop z of
    every page, in page order (``item_index`` i is ``pages[i]``).
    """

    crop_id: int
    slices: list[int]
    pages: list[int]
    images: dict[str, bytes]
    overview: dict[str, bytes]
    data: Json
    prediction: Json | None
    pushed: Json


def relabel_shown(
    consensus: npt.NDArray[np.uint32], max_instances: int
) -> tuple[npt.NDArray[np.uint32], dict[int, int]]:
    """Return (N, H, W) labels renumbered 1..K by size, and {new id: model id}.

    ``consensus``: the model's instances on the N shown slices. Brush label values only go up
    to ``max_instances``: smaller instances beyond that are left out of the pre-annotation.
    """
    ids, sizes = np.unique(consensus[consensus > 0], return_counts=True)
    order = ids[np.argsort(-sizes, kind="stable")]
    kept = order[:max_instances]
    if len(order) > len(kept):
        log.warning(
            "%d instances exceed labelstudio.max_instances=%d: the smallest are not pre-annotated",
            len(order) - len(kept),
            max_instances,
        )
    lookup = np.zeros(int(consensus.max(initial=0)) + 1, np.uint32)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    return lookup[consensus], {new: int(old) for new, old in enumerate(kept, start=1)}


def flagged_instances(
    risks: Sequence[Json],
    model_to_label: dict[int, int],
    seen_on: Mapping[int, Sequence[int]] | None = None,
) -> list[str]:
    """Return 'n3 (z 26, 28): may be merged (several neurons)' notes for the flagged shown.

    ``seen_on``: {label id: absolute z of the label pages it is on}; without it the notes
    name no pages.
    """
    notes = []
    for risk in risks:
        new = model_to_label.get(int(risk["id"]))
        if new is not None and risk.get("flags"):
            flags = ", ".join(FLAG_NOTES.get(flag, flag) for flag in risk["flags"])
            where = list((seen_on or {}).get(new, []))
            pages = f" (z {', '.join(str(z) for z in where)})" if where else ""
            notes.append(f"{instance_label(new)}{pages}: {flags}")
    return notes


def flagged_labels(risks: Sequence[Json], model_to_label: dict[int, int]) -> set[int]:
    """Return the label ids (1..K) of the shown instances the model flags."""
    return {
        model_to_label[int(r["id"])]
        for r in risks
        if r.get("flags") and int(r["id"]) in model_to_label
    }


def start_page(shown: npt.NDArray[np.uint32], slices: Sequence[int], flagged: set[int]) -> int:
    """Return the label slice (crop z) with the most flagged neurons (ties: the lowest z).

    ``shown``: the (N, H, W) labels on the N label ``slices``; ``flagged``: label ids.
    """
    counts = [len(flagged & {int(v) for v in np.unique(plane)}) for plane in shown]
    return int(slices[int(np.argmax(counts))]) if len(slices) else 0


def plan_pages(
    depth: int, slices: Sequence[int], first: int, context: int | None = CONTEXT_SLICES
) -> list[int]:
    """Return the crop z of each page: a contiguous block around the label ``slices``.

    The block runs from ``context`` slices below the lowest label slice to ``context`` above
    the highest (clipped to the crop's ``depth``; None: the whole crop). Label Studio opens a
    task on its first page and cannot be told another, so the block starts at ``first`` (the
    label page to open on) and goes up; the slices below ``first`` follow, in order.
    """
    if not slices:
        raise ValueError("a task needs at least one label slice")
    if first not in slices:
        raise ValueError(f"the first page {first} is not one of the label slices {list(slices)}")
    reach = depth if context is None else context
    low, high = max(0, min(slices) - reach), min(depth - 1, max(slices) + reach)
    block = list(range(low, high + 1))
    at = block.index(first)
    return block[at:] + block[:at]


def render_pages(
    raw: npt.ArrayLike,
    pages: Sequence[int],
    slices: Sequence[int],
    uncertainty: npt.ArrayLike | None,
    vmax: float,
    z_origin: int,
    prefix: str,
) -> dict[str, bytes]:
    """Return {name: PNG} of the pages, in page order, named by absolute z.

    ``raw``: (C, Z, Y, X), contrast set once per crop; each page gets its absolute z
    (``z_origin`` + z) in the corner, black on white on a label slice, grey on black on
    context; ``uncertainty``: (Z, Y, X) or None (no model: no doubt marks), drawn as marks on
    the fixed scale 0..``vmax``.
    """
    data = np.asarray(raw)
    limits = channel_limits(data)
    doubt = None if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    label_set = set(slices)
    images = {}
    for z in pages:
        rgb = render_rgb(data[:, z], limits)
        if doubt is not None:
            rgb = doubt_marks(rgb, doubt[z], vmax)
        images[f"{prefix}_z{z_origin + z}.png"] = png_bytes(
            page_tag(rgb, z_origin + z, z in label_set)
        )
    return images


def page_results(
    results: Sequence[Json], slices: Sequence[int], pages: Sequence[int], z_origin: int
) -> list[Json]:
    """Return brush results made over the label ``slices`` moved onto their ``pages``.

    ``results``: from :func:`instances_to_results` of the labels on the label slices
    (``item_index`` i is ``slices[i]``). Each comes back with the index of its page and the
    id ``z<absolute z>-<label>``, the numbering the annotator sees.
    """
    position = {z: i for i, z in enumerate(pages)}
    moved = []
    for result in results:
        z = slices[int(result["item_index"])]
        label = result["value"]["brushlabels"][0]
        moved.append(result | {"item_index": position[z], "id": f"z{z_origin + z}-{label}"})
    return moved


def napari_command(volume: Path, crop: CropInfo, z: int, consensus: Path | None = None) -> str:
    """Return a shell command line that opens a crop in napari, in 3-D, at absolute ``z``.

    It reads the crop's z range with a margin of ``NAPARI_MARGIN`` voxels in y and x from
    the volume's OME-Zarr raw array, places it at its volume coordinates (so napari's z is the
    task's), and adds the model's consensus instances when ``consensus`` (the crop's analysis
    zarr) is given.
    """
    (z0, y0, x0), (z1, y1, x1) = crop.origin, crop.end
    y0, x0 = max(0, y0 - NAPARI_MARGIN), max(0, x0 - NAPARI_MARGIN)
    box = f"{z0}:{z1}, {y0}:{y1 + NAPARI_MARGIN}, {x0}:{x1 + NAPARI_MARGIN}"
    # Python strings in double quotes: the shell quoting around the program stays plain.
    code = [
        "import napari, zarr",
        f'a = zarr.open_array({json.dumps(str(volume / RAW_PATH))}, mode="r")[:, {box}]',
        "v = napari.Viewer(ndisplay=3)",
        f'v.add_image(a, channel_axis=0, blending="additive", translate=({z0}, {y0}, {x0}))',
    ]
    if consensus is not None:
        model = json.dumps(str(consensus / "consensus"))
        code.append(
            f'v.add_labels(zarr.open_array({model}, mode="r")[...], name="model", '
            f"translate={tuple(crop.origin)!r})"
        )
    code += [f"v.dims.set_point(0, {z})", "napari.run()"]
    return "python -c " + shlex.quote("; ".join(code))


def priority(rank: int | None, ranked: int, score: float) -> float:
    """Return a crop's priority in [0, 1]: 1 for the first of ``ranked`` crops, falling by rank.

    Without a rank, the score squashed into [0, 1) (``s / (1 + s)``, 0 for s <= 0).
    """
    if rank is not None and ranked > 0:
        return round(1.0 - rank / ranked, 4)
    return round(max(score, 0.0) / (1.0 + max(score, 0.0)), 4)


@dataclass
class _Model:
    """What the model says about a crop's label slices, as the task shows it."""

    shown: npt.NDArray[np.uint32]
    label_ids: dict[int, int]
    notes: list[str]
    first: int


def _read_model(
    path: Path, slices: Sequence[int], z0: int, max_instances: int, shape: Sequence[int]
) -> _Model:
    """Return the model's instances on the label slices, flags and the page to open on."""
    if not path.exists():
        return _Model(np.zeros((0, *shape[1:]), np.uint32), {}, [], slices[0])
    shown, label_ids = relabel_shown(read_analysis(path, "consensus")[list(slices)], max_instances)
    model_to_label = {old: new for new, old in label_ids.items()}
    risks = read_instance_risks(path)
    seen_on = {
        k: [z0 + z for z, plane in zip(slices, shown, strict=True) if (plane == k).any()]
        for k in label_ids
    }
    notes = flagged_instances(risks, model_to_label, seen_on)
    first = start_page(shown, slices, flagged_labels(risks, model_to_label))
    return _Model(shown, label_ids, notes, first)


@dataclass(frozen=True)
class _Shown:
    """What a task shows of its crop beyond the pages: the task data and the record of what
    was pushed that are its own, and its pre-annotation on the label slices."""

    slices: list[int]
    pages: list[int]
    caption: str
    offered: int
    prediction: Json | None
    data: Json
    pushed: Json
    uncertainty: npt.NDArray[np.float32] | None = None
    consensus: Path | None = None


def build_task(
    project: Project, round_info: RoundInfo, crop: CropInfo, score: float, rank: int | None
) -> CropTask:
    """Return one selected crop as a Label Studio task, rendered from the pool and its zarrs."""
    settings = project.config.labelstudio
    with project.session() as session:
        volume = pool_volumes.get_volume(session, crop.volume_name)
        ranked = sum(s.rank is not None for s in pool_rounds.round_scores(session, round_info.id))
    slices, reason = plan_slices(project, round_info.number, crop)
    path = analysis_path(project, round_info.number, crop.id)
    has_model = path.exists()
    z0 = crop.origin[0]
    model = _read_model(path, slices, z0, settings.max_instances, crop.shape)
    pages = plan_pages(crop.shape[0], slices, model.first)
    share = priority(rank, ranked, score)
    prediction: Json | None = None
    if has_model:
        prediction = {
            "result": page_results(instances_to_results(model.shown), slices, pages, z0),
            "score": share,
            "model_version": f"round-{round_info.number}",
        }
    place = f"rank {rank + 1} of {ranked}, " if rank is not None and ranked else ""
    standing = place + f"priority {share:.2f}"
    shown = _Shown(
        slices,
        pages,
        _caption(
            crop, volume.name, round_info.number, standing, slices, pages, reason, model.notes
        ),
        len(model.label_ids) + SPARE_LABELS if has_model else ROUND0_LABELS,
        prediction,
        data={"priority": share, "score": score, "rank": rank, "flagged": model.notes},
        pushed={
            "reason": reason,
            "score": score,
            "priority": share,
            "rank": rank,
            "flagged": model.notes,
            "instances": {instance_label(new): old for new, old in model.label_ids.items()},
        },
        uncertainty=read_analysis(path, "mutual_information") if has_model else None,
        consensus=path if has_model else None,
    )
    return _crop_task(project, volume, round_info.number, crop, shown)


def _crop_task(
    project: Project, volume: VolumeInfo, round_number: int, crop: CropInfo, shown: _Shown
) -> CropTask:
    """Return a crop rendered as a task: its pages, overview, napari line and data."""
    settings = project.config.labelstudio
    raw = read_raw(project.resolve(volume.path), crop.box)
    z0, slices, pages = crop.origin[0], shown.slices, shown.pages
    vmax = settings.overlay_vmax or DOUBT_VMAX
    prefix = f"crop{crop.id}_r{round_number}" + ("_review" if REVIEW_KEY in shown.pushed else "")
    images = render_pages(raw, pages, slices, shown.uncertainty, vmax, z0, prefix)
    view = overview_image(raw, channel_limits(raw), slices, pages, z0, shown.uncertainty, vmax)
    data = {
        CAPTION_KEY: shown.caption,
        NAPARI_KEY: napari_command(
            project.resolve(volume.path), crop, z0 + pages[0], shown.consensus
        ),
        LABELS_KEY: offered_labels(min(shown.offered, settings.max_instances)),
        "crop_id": crop.id,
        "round": round_number,
        **shown.data,
        "slices": [z0 + z for z in slices],
        "pages": f"z {z0 + min(pages)}-{z0 + max(pages)}",
    }
    pushed = shown.pushed | {
        "shape": list(crop.shape),
        "pages": pages,
        "model_version": shown.prediction["model_version"] if shown.prediction else None,
    }
    overview = {f"{prefix}_overview.png": png_bytes(view)}
    return CropTask(crop.id, slices, pages, images, overview, data, shown.prediction, pushed)


def build_review_task(project: Project, round_info: RoundInfo, crop: CropInfo) -> CropTask:
    """Return a labeled crop as a review task: its stored labels on the slices they were
    annotated on as the pre-annotation, a voxel in two neurons a region of each."""
    if crop.label_path is None:
        raise StateError(f"crop {crop.id} is {crop.status}: no labels to review")
    with project.session() as session:
        volume = pool_volumes.get_volume(session, crop.volume_name)
        reviewed = pool_tasks.labels_annotation(session, crop.id)
    stored = read_crop_labels(project.resolve(crop.label_path))
    slices = [int(z) for z in np.flatnonzero(stored.mask.any(axis=(1, 2)))]
    if not slices:
        raise StateError(f"crop {crop.id}: its labels {crop.label_path} mark no annotated slice")
    labels, overlaps = stored_on_slices(
        stored, slices, project.config.labelstudio.max_instances, f"crop {crop.id}"
    )
    crossed = np.bincount(overlaps[:, 0], minlength=len(slices))
    pages = plan_pages(crop.shape[0], slices, slices[int(np.argmax(crossed))])
    results = instances_to_results(labels, overlaps=overlaps)
    prediction = {
        "result": page_results(results, slices, pages, crop.origin[0]),
        "score": 1.0,
        "model_version": REVIEW_VERSION,
    }
    unsure = reviewed is not None and reviewed.status == "unsure"
    when = "at import" if crop.labeled_round is None else f"in round {crop.labeled_round}"
    lead = (
        f"Review of crop {crop.id}, labelled {when}{' and marked unsure' if unsure else ''}; "
        "voxels in two neurons are painted in both. "
    )
    reason = "slices labelled before"
    review = {
        "labels": crop.label_path,
        "annotation": None if reviewed is None else reviewed.id,
        "round": crop.labeled_round,
    }
    shown = _Shown(
        slices,
        pages,
        lead + _caption(crop, volume.name, round_info.number, "review", slices, pages, reason, []),
        int(labels.max(initial=0)) + SPARE_LABELS,
        prediction,
        data={"review": True, REVIEW_OF: crop.label_path, "priority": 1.0},
        pushed={"reason": reason, REVIEW_KEY: review},
    )
    return _crop_task(project, volume, round_info.number, crop, shown)


def stored_on_slices(
    stored: CropLabels, slices: Sequence[int], max_instances: int, where: str = "labels"
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """Return a crop's labels on its label ``slices`` as (N, H, W) and overlap rows
    (slice index, y, x, id), ids kept when they fit the brush labels ``n1``..``n<max_instances>``
    and otherwise renumbered 1..K in order; InputError if more neurons than that."""
    depth = stored.labels.shape[0]
    index = np.full(depth, -1, np.int64)
    index[list(slices)] = np.arange(len(slices))
    rows = stored.overlaps[index[stored.overlaps[:, 0]] >= 0].astype(np.int64)
    rows[:, 0] = index[rows[:, 0]]
    labels = stored.labels[list(slices)].astype(np.uint32)
    ids = np.union1d(np.unique(labels[labels > 0]), rows[:, 3]).astype(np.int64)
    if len(ids) > max_instances:
        raise InputError(
            f"{where}: {len(ids)} neurons on the label slices, but labelstudio.max_instances is "
            f"{max_instances}: raise it to at least {len(ids)} to review them"
        )
    if ids.size and ids.max() > max_instances:
        lookup = np.zeros(int(ids.max()) + 1, np.uint32)
        lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
        labels, rows[:, 3] = lookup[labels], lookup[rows[:, 3]]
    return labels, rows


def _caption(
    crop: CropInfo,
    volume: str,
    round_number: int,
    standing: str,
    slices: Sequence[int],
    pages: Sequence[int],
    reason: str,
    flagged: Sequence[str],
) -> str:
    z0 = crop.origin[0]
    box = " ".join(f"{a}:{b}" for a, b in zip(crop.origin, crop.end, strict=True))
    labels = ", ".join(str(z0 + z) for z in slices)
    text = (
        f"Crop {crop.id} of {volume} (z y x {box}), round {round_number}, {standing}. "
        f"Label z = {labels} (numbers on white; the {reason}); "
        f"z {z0 + min(pages)}-{z0 + max(pages)} to step through, from z {z0 + pages[0]}."
    )
    if flagged:
        text += " Check " + "; ".join(flagged) + "."
    return text


def project_id(project: Project, client: LabelStudioClient) -> int:
    """Return this project's Label Studio project, created on first use (id kept in the pool).

    The project also gets its default Data Manager view (by priority, no image columns).
    """
    settings = project.config.labelstudio
    config = labeling_config()
    stored = None if reconcile_deleted(project, client).project_gone else _stored_project(project)
    if stored is not None:
        found = client.ensure_project(settings.project_title, config, project_id=stored)
    else:
        found = client.create_project(f"{settings.project_title}: {project.root.name}", config)
        with project.session() as session:
            pool_settings.set_setting(session, PROJECT_SETTING, str(found))
            pool_settings.set_setting(session, SERVER_SETTING, client.shown_url)
    client.ensure_default_view(found, HIDDEN_DATA)
    return found


@dataclass(frozen=True)
class Reconciled:
    """What a reconcile found: tasks deleted in Label Studio, and whether the project went."""

    deleted: int = 0
    project_gone: bool = False


def reconcile_deleted(project: Project, client: LabelStudioClient) -> Reconciled:
    """Retire the pool's tasks that were deleted in Label Studio (see ``retire_tasks``).

    When the whole Label Studio project is gone, the pool forgets it (and the ingest cursor):
    the next push creates a new project. The active tasks are read before the server's list,
    so a task pushed in between is never taken for deleted.
    """
    ls_project = _stored_project(project)
    if ls_project is None:
        return Reconciled()
    check_server(project, client)
    with project.session() as session:
        active = [t for t in pool_tasks.list_tasks(session, active=True)
                  if t.ls_project_id == ls_project]  # fmt: skip
    present = client.task_ids(ls_project)
    gone = [t.id for t in active if present is None or t.ls_task_id not in present]
    with project.session() as session:
        pool_tasks.retire_tasks(session, gone)
        if present is None:
            pool_settings.delete_setting(session, PROJECT_SETTING)
            pool_settings.delete_setting(session, SINCE_SETTING)
    if gone or present is None:
        log.warning(
            "Label Studio %s: %d of this project's tasks were deleted there; their crops without "
            "labels are back in the pool",
            f"project {ls_project} is gone" if present is None else f"project {ls_project}",
            len(gone),
        )
    return Reconciled(len(gone), present is None)


def _stored_project(project: Project) -> int | None:
    with project.session() as session:
        stored = pool_settings.get_setting(session, PROJECT_SETTING)
    return None if stored is None else int(stored)


def check_server(project: Project, client: LabelStudioClient) -> None:
    """Raise LabelStudioError unless ``client`` talks to the server this project pushed to:
    task ids of another server would map one crop's annotation onto another crop."""
    with project.session() as session:
        known = pool_settings.get_setting(session, SERVER_SETTING)
        ls_project = pool_settings.get_setting(session, PROJECT_SETTING)
    if known is not None and known != client.shown_url:
        raise LabelStudioError(
            f"this project's tasks are on the Label Studio server {known} (its project "
            f"{ls_project}), but LABEL_STUDIO_URL points to {client.shown_url}; point it back "
            f"to {known}"
        )


def push_selected(
    project: Project,
    round_info: RoundInfo,
    *,
    limit: int | None = None,
    client: LabelStudioClient | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Push a round's selected, still unlabeled crops (best first, at most ``limit``)."""
    owned = client is None
    client = client or LabelStudioClient.from_env(project.root / ".env")
    try:
        return _push(project, round_info, limit, client, progress)
    finally:
        if owned:
            client.close()


def _push(
    project: Project,
    round_info: RoundInfo,
    limit: int | None,
    client: LabelStudioClient,
    progress: Progress | None,
) -> PushResult:
    client.check()
    ls_project = project_id(project, client)
    crops = selected_crops(project, round_info.id)[:limit]
    if not crops:
        return PushResult(ls_project, 0)
    with project.session() as session:
        scores = {s.crop_id: s for s in pool_rounds.round_scores(session, round_info.id)}
    tasks = []
    for done, crop in enumerate(crops, start=1):
        score = scores[crop.id]
        tasks.append(build_task(project, round_info, crop, score.score, score.rank))
        if progress is not None:
            progress(done, len(crops))
    return _send(project, client, ls_project, round_info, tasks, pool_tasks.queue_crop)


def push_reviews(
    project: Project,
    round_info: RoundInfo,
    *,
    crop_ids: Sequence[int] = (),
    limit: int | None = None,
    client: LabelStudioClient | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Push review tasks (at most ``limit``): of every crop whose labels in force are marked
    unsure, or of the labeled ``crop_ids``, leaving out crops with an open task.

    A named crop that is not labeled is an InputError, raised before anything is contacted or
    written. The task shows the crop's stored labels (see :func:`build_review_task`) and
    replaces the crop's earlier task; the answer is ingested like any other.
    """
    named = _labeled_crops(project, crop_ids)
    owned = client is None
    client = client or LabelStudioClient.from_env(project.root / ".env")
    try:
        client.check()
        ls_project = project_id(project, client)  # retires reviews deleted there first
        crops = _due_for_review(project, named)[:limit]
        tasks = []
        for done, crop in enumerate(crops, start=1):
            tasks.append(build_review_task(project, round_info, crop))
            if progress is not None:
                progress(done, len(crops))
        return _send(project, client, ls_project, round_info, tasks, pool_tasks.queue_review)
    finally:
        if owned:
            client.close()


def _labeled_crops(project: Project, crop_ids: Sequence[int]) -> list[CropInfo] | None:
    """Return the named crops (None when none are named); InputError if one is not labeled."""
    if not crop_ids:
        return None
    with project.session() as session:
        crops = [pool_volumes.get_crop(session, crop_id) for crop_id in dict.fromkeys(crop_ids)]
    for crop in crops:
        if crop.status != "labeled":
            raise InputError(
                f"--crop {crop.id}: crop {crop.id} is {crop.status}, not labeled: only labeled "
                f"crops can be reviewed; nothing was pushed"
            )
    return crops


def _due_for_review(project: Project, named: list[CropInfo] | None) -> list[CropInfo]:
    """Return the named crops, or the labeled ones whose labels are marked unsure, that have
    no open task (a review pushed and not answered yet)."""
    with project.session() as session:
        waiting = pool_tasks.open_task_crop_ids(session)
        if named is None:
            unsure = pool_tasks.unsure_crop_ids(session)
            named = [c for c in pool_volumes.list_crops(session, status="labeled")
                     if c.id in unsure]  # fmt: skip
    return [crop for crop in named if crop.id not in waiting]


Queue = Callable[..., Any]


def _send(
    project: Project,
    client: LabelStudioClient,
    ls_project: int,
    round_info: RoundInfo,
    tasks: Sequence[CropTask],
    queue: Queue,
) -> PushResult:
    """Import the tasks not left in Label Studio by an interrupted push, then record them all
    with ``queue`` (``pool_tasks.queue_crop`` or ``queue_review``) in one transaction."""
    if not tasks:
        return PushResult(ls_project, 0)
    found = _tasks_already_in_labelstudio(project, client, ls_project, tasks)
    missing = [t for t in tasks if t.crop_id not in found]
    images = project.config.labelstudio.images
    new_ids = upload_and_import(client, ls_project, missing, images) if missing else []
    ls_ids = found | dict(zip([t.crop_id for t in missing], new_ids, strict=True))
    with project.session() as session:
        for task in tasks:
            queue(
                session,
                task.crop_id,
                round_id=round_info.id,
                slices=task.slices,
                pushed=task.pushed,
                ls_project_id=ls_project,
                ls_task_id=ls_ids[task.crop_id],
            )
    recovered = len(tasks) - len(missing)
    log.info("pushed %d crops to project %d (%d recovered)", len(tasks), ls_project, recovered)
    return PushResult(ls_project, len(tasks), recovered, [ls_ids[t.crop_id] for t in tasks])


def _tasks_already_in_labelstudio(
    project: Project, client: LabelStudioClient, ls_project: int, tasks: Sequence[CropTask]
) -> dict[int, int]:
    """Return {crop id: task id} of the ``tasks`` that an interrupted push left behind: tasks
    the pool does not know with the same crop, round and reviewed labels in their data."""
    wanted = {t.crop_id: t.data for t in tasks}
    with project.session() as session:
        known = {(t.crop_id, t.ls_task_id) for t in pool_tasks.list_tasks(session)}
    found = {}
    for task in client.list_task_data(ls_project):
        data = task.get("data") or {}
        crop = data.get("crop_id")
        if not isinstance(crop, int) or crop not in wanted or (crop, task.get("id")) in known:
            continue
        if all(data.get(key) == wanted[crop].get(key) for key in ("round", REVIEW_OF)):
            found[crop] = checked_id(task.get("id"), "a task of this round")
    return found


def upload_and_import(
    client: LabelStudioClient, ls_project: int, tasks: Sequence[CropTask], images_as: str
) -> list[int]:
    """Return the new task ids after uploading the images and importing tasks + predictions.

    ``images_as``: "upload" (files on the server) or "inline" (data URIs in the task data).
    """
    images = {name: png for t in tasks for name, png in (t.images | t.overview).items()}
    if images_as == "upload":
        urls = client.upload_images(ls_project, images)
    else:
        urls = {name: data_uri(png) for name, png in images.items()}
    ids: list[int] = []
    for batch in chunks(tasks, TASKS_PER_IMPORT):
        ids.extend(client.import_tasks(ls_project, [_task_json(t, urls) for t in batch]))
    return ids


def _task_json(task: CropTask, urls: dict[str, str]) -> Json:
    data = task.data | {
        IMAGES_KEY: [urls[name] for name in task.images],
        OVERVIEW_KEY: [urls[name] for name in task.overview],
    }
    json: Json = {"data": data}
    if task.prediction is not None:
        json["predictions"] = [task.prediction]
    return json


def latest_round(project: Project) -> RoundInfo:
    """Return the newest round (what a bare ``activeseg push`` pushes); StateError if none."""
    with project.session() as session:
        rounds = pool_rounds.list_rounds(session)
    if not rounds:
        raise StateError(
            "no round yet: run `activeseg round --until select` to score and select crops first"
        )
    return rounds[-1]
