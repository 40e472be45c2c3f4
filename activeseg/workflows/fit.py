"""Training a project's model on the labeled crops of its pool, recorded as a checkpoint row."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from activeseg.core.models.checkpoint import load_model
from activeseg.core.training import Progress, TrainingCrop, train_model
from activeseg.data.volumes import read_crop_labels, read_raw
from activeseg.errors import ConfigError, InputError, StateError
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CheckpointInfo
from activeseg.workflows.locks import hold_lock
from activeseg.workflows.project import Project
from activeseg.workflows.pseudo import pseudo_crops

log = logging.getLogger(__name__)

LOCK = "train"
LOCK_WAIT_SECONDS = 24 * 3600.0


def training_crops(project: Project) -> list[TrainingCrop]:
    """Return the labeled crops of the pool split (never val or test) with their raw data;
    crops whose labels the annotator marked unsure only with ``train.unsure: include``."""
    with project.session() as session:
        crops = pool_volumes.list_crops(session, status="labeled", split="pool")
        volumes = {v.id: v for v in pool_volumes.list_volumes(session)}
        unsure = pool_tasks.unsure_crop_ids(session)
    if project.config.train.unsure == "exclude":
        crops = [crop for crop in crops if crop.id not in unsure]
    loaded = []
    for crop in crops:
        if crop.label_path is None:
            raise StateError(f"crop {crop.id} is labeled but has no label path")
        labels = read_crop_labels(project.resolve(crop.label_path))
        raw = read_raw(project.resolve(volumes[crop.volume_id].path), crop.box)
        loaded.append(
            TrainingCrop(
                raw=raw,
                labels=labels.labels,
                mask=labels.mask,
                overlap=labels.instances().overlap_mask(),
                name=f"crop {crop.id}",
            )
        )
    return loaded


def warm_start_from(project: Project) -> Path | None:
    """Return the newest readable checkpoint folder; an unreadable one (a disk that lost it,
    a truncated file) is skipped with a warning rather than failing every later round."""
    with project.session() as session:
        recent = pool_rounds.recent_checkpoints(session)
    for checkpoint in recent:
        path = project.resolve(checkpoint.path)
        try:
            load_model(path)
        except (InputError, ConfigError) as exc:
            log.warning("not warm-starting from %s: %s", checkpoint.path, exc)
            continue
        return path
    return None


def checkpoint_dir(project: Project, round_number: int | None) -> Path:
    """Return a new folder for a checkpoint (per round, or numbered for ad-hoc training).

    A round's folder that exists already is the leftover of a training the ledger never
    recorded (the train stage reuses a recorded one instead): it is removed.
    """
    if round_number is not None:
        path = project.models_dir / f"round-{round_number:03d}"
        if path.exists():
            log.warning("removing %s: an interrupted training left it unrecorded", path)
            shutil.rmtree(path)
        return path
    taken = {p.name for p in project.models_dir.glob("manual-*")}
    n = next(i for i in range(len(taken) + 1) if f"manual-{i:03d}" not in taken)
    return project.models_dir / f"manual-{n:03d}"


def train_project(
    project: Project,
    *,
    round_id: int | None = None,
    round_number: int | None = None,
    progress: Progress | None = None,
) -> CheckpointInfo:
    """Train on the pool's labeled crops (warm start from the newest checkpoint) and record it.

    Trainings of one project take turns (the ``train`` lock): each gets its own folder.
    """
    with hold_lock(project.root, LOCK, wait_seconds=LOCK_WAIT_SECONDS):
        return _train_project(project, round_id, round_number, progress)


def _train_project(
    project: Project, round_id: int | None, round_number: int | None, progress: Progress | None
) -> CheckpointInfo:
    crops = training_crops(project)
    init_from = warm_start_from(project) if project.config.train.warm_start else None
    out = checkpoint_dir(project, round_number)
    extra = pseudo_crops(project, init_from)  # [] unless train.pseudo_labels is on
    result = train_model(
        [*crops, *extra], project.config, out, init_from=init_from, progress=progress
    )
    with project.session() as session:
        return pool_rounds.add_checkpoint(
            session,
            round_id=round_id,
            path=project.relative(result.checkpoint),
            kind=project.config.model.kind,
            steps=result.steps,
            labeled_crops=len(crops),
        )


def latest_model_path(project: Project) -> Path:
    """Return the newest checkpoint folder, or raise StateError if none was trained."""
    with project.session() as session:
        latest = pool_rounds.latest_checkpoint(session)
    if latest is None:
        raise StateError("no trained model in this project yet: run `activeseg train` first")
    return project.resolve(latest.path)
