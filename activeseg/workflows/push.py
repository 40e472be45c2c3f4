"""Push a round's selected crops to Label Studio as tasks with the model's neurons and doubts.

One task per crop: a few z-slices (where the model is most unsure) as RGB images, the same
slices with the uncertainty painted over them, a caption saying why these slices and which
neurons to check, and the model's instances on those slices as a brush pre-annotation whose
``score`` is the crop's acquisition score (sort the Data Manager by it, highest first).

The push is safe to re-run. Images go up first (an orphaned upload is harmless); tasks are
imported with their predictions inline in one call per batch, so a task never lacks its
pre-annotation; and the pool records the tasks and marks the crops ``queued`` in one
transaction. A push that dies between the import and that transaction leaves tasks in Label
Studio that the pool does not know: the next push finds them by crop and round in their data
and records them instead of importing them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.data.volumes import read_raw
from activeseg.errors import LabelStudioError, StateError
from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import LabelStudioClient, checked_id, chunks
from activeseg.labelstudio.labeling import (
    CAPTION_KEY,
    IMAGES_KEY,
    OVERLAYS_KEY,
    instance_label,
    labeling_config,
)
from activeseg.labelstudio.render import (
    channel_limits,
    composite,
    data_uri,
    overlay_rgba,
    png_bytes,
    render_rgb,
)
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, RoundInfo
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
TASKS_PER_IMPORT = 100
FLAG_NOTES = {
    "split": "may be split (part of a neuron)",
    "merge": "may be merged (several neurons)",
    "unstable": "unstable across samples",
}
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
    """One crop rendered as a task: images by name, task data and the pre-annotation."""

    crop_id: int
    slices: list[int]
    images: dict[str, bytes]
    overlays: dict[str, bytes]
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


def flagged_instances(risks: Sequence[Json], model_to_label: dict[int, int]) -> list[str]:
    """Return 'n3: may be merged (several neurons)' notes for the flagged instances shown."""
    notes = []
    for risk in risks:
        new = model_to_label.get(int(risk["id"]))
        if new is not None and risk.get("flags"):
            flags = ", ".join(FLAG_NOTES.get(flag, flag) for flag in risk["flags"])
            notes.append(f"{instance_label(new)}: {flags}")
    return notes


def render_crop(
    raw: npt.ArrayLike,
    slices: Sequence[int],
    uncertainty: npt.ArrayLike | None,
    vmax: float | None,
    prefix: str,
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Return ({name: PNG} of the slices, {name: PNG} of the overlays), in slice order.

    ``raw``: (C, Z, Y, X), contrast set once per crop; ``uncertainty``: (Z, Y, X) or None (no
    model yet: the overlays show the bare slices); ``vmax``: uncertainty at full colour (None:
    the crop's maximum).
    """
    data = np.asarray(raw)
    limits = channel_limits(data)
    doubt = None if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    top = vmax or (float(doubt.max()) if doubt is not None else 0.0) or 1.0
    images, overlays = {}, {}
    for z in slices:
        rgb = render_rgb(data[:, z], limits)
        images[f"{prefix}_z{z}.png"] = png_bytes(rgb)
        shown = rgb if doubt is None else composite(rgb, overlay_rgba(doubt[z], top))
        overlays[f"{prefix}_u{z}.png"] = png_bytes(shown)
    return images, overlays


def build_task(
    project: Project, round_info: RoundInfo, crop: CropInfo, score: float, rank: int | None
) -> CropTask:
    """Return one selected crop as a Label Studio task, rendered from the pool and its zarrs."""
    settings = project.config.labelstudio
    with project.session() as session:
        volume = next(v for v in pool_volumes.list_volumes(session) if v.id == crop.volume_id)
    raw = read_raw(project.resolve(volume.path), crop.box)
    slices, reason = plan_slices(project, round_info.number, crop)
    path = analysis_path(project, round_info.number, crop.id)
    has_model = path.exists()
    uncertainty = read_analysis(path, "mutual_information") if has_model else None
    prefix = f"crop{crop.id}_r{round_info.number}"
    images, overlays = render_crop(raw, slices, uncertainty, settings.overlay_vmax, prefix)
    flagged: list[str] = []
    prediction: Json | None = None
    label_ids: dict[int, int] = {}
    if has_model:
        consensus = read_analysis(path, "consensus")[slices]
        shown, label_ids = relabel_shown(consensus, settings.max_instances)
        model_to_label = {old: new for new, old in label_ids.items()}
        flagged = flagged_instances(read_instance_risks(path), model_to_label)
        prediction = {
            "result": instances_to_results(shown),
            "score": score,
            "model_version": f"round-{round_info.number}",
        }
    caption = _caption(crop, volume.name, round_info.number, score, slices, reason, flagged)
    data = {
        CAPTION_KEY: caption,
        "crop_id": crop.id,
        "round": round_info.number,
        "score": score,
        "rank": rank,
        "slices": slices,
        "flagged": flagged,
    }
    pushed = {
        "reason": reason,
        "score": score,
        "rank": rank,
        "flagged": flagged,
        "shape": list(crop.shape),
        "instances": {instance_label(new): old for new, old in label_ids.items()},
        "model_version": prediction["model_version"] if prediction else None,
    }
    return CropTask(crop.id, slices, images, overlays, data, prediction, pushed)


def _caption(
    crop: CropInfo,
    volume: str,
    round_number: int,
    score: float,
    slices: Sequence[int],
    reason: str,
    flagged: Sequence[str],
) -> str:
    box = " ".join(f"{a}:{b}" for a, b in zip(crop.origin, crop.end, strict=True))
    shown = ", ".join(str(crop.origin[0] + z) for z in slices)
    text = (
        f"Crop {crop.id} of {volume} (z y x {box}), round {round_number}, score {score:.3g}. "
        f"Shown: z = {shown}, the {reason}. Label every neuron on every shown slice; "
        f"keep one label per neuron across slices."
    )
    if flagged:
        text += " Check " + "; ".join(flagged) + "."
    return text


def project_id(project: Project, client: LabelStudioClient) -> int:
    """Return this project's Label Studio project, created on first use (id kept in the pool)."""
    settings = project.config.labelstudio
    config = labeling_config(settings.max_instances)
    with project.session() as session:
        stored = pool_settings.get_setting(session, PROJECT_SETTING)
    if stored is not None:
        check_server(project, client)
        return client.ensure_project(settings.project_title, config, project_id=int(stored))
    title = f"{settings.project_title}: {project.root.name}"
    created = client.create_project(title, config)
    with project.session() as session:
        pool_settings.set_setting(session, PROJECT_SETTING, str(created))
        pool_settings.set_setting(session, SERVER_SETTING, client.shown_url)
    return created


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
    found = _tasks_already_in_labelstudio(client, ls_project, round_info.number)
    missing = [t for t in tasks if t.crop_id not in found]
    images = project.config.labelstudio.images
    new_ids = upload_and_import(client, ls_project, missing, images) if missing else []
    ls_ids = found | dict(zip([t.crop_id for t in missing], new_ids, strict=True))
    with project.session() as session:
        for task in tasks:
            pool_tasks.queue_crop(
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
    client: LabelStudioClient, ls_project: int, round_number: int
) -> dict[int, int]:
    """Return {crop id: task id} of this round's tasks that an interrupted push left behind."""
    found = {}
    for task in client.list_task_data(ls_project):
        data = task.get("data") or {}
        if data.get("round") == round_number and isinstance(data.get("crop_id"), int):
            found[int(data["crop_id"])] = checked_id(task.get("id"), "a task of this round")
    return found


def upload_and_import(
    client: LabelStudioClient, ls_project: int, tasks: Sequence[CropTask], images_as: str
) -> list[int]:
    """Return the new task ids after uploading the images and importing tasks + predictions.

    ``images_as``: "upload" (files on the server) or "inline" (data URIs in the task data).
    """
    images = {name: png for t in tasks for name, png in (t.images | t.overlays).items()}
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
        OVERLAYS_KEY: [urls[name] for name in task.overlays],
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
