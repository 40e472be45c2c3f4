"""Training a project's model on the labeled crops of its pool, recorded as a checkpoint row."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from activeseg.config import Config
from activeseg.core.models.checkpoint import TRAINING_FILE, load_model
from activeseg.core.training import (
    Progress,
    Shard,
    TrainingCrop,
    TrainResult,
    train_model,
    training_device,
)
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
    processes = project.config.compute.train_processes
    training = [*crops, *pseudo_crops(project, init_from)]  # no pseudo crops unless asked
    if processes > 1:
        result = train_in_processes(training, project.config, out, processes, init_from=init_from)
    else:
        result = train_model(training, project.config, out, init_from=init_from, progress=progress)
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


def train_in_processes(
    crops: Sequence[TrainingCrop],
    config: Config,
    out: Path,
    processes: int,
    *,
    init_from: Path | None = None,
) -> TrainResult:
    """Return the result of training on ``processes`` processes of this machine, data-parallel
    (see :class:`activeseg.core.training.Shard`): gloo on the CPU, NCCL on GPUs (one per
    process). Each process takes ``train.batch_size / processes`` of every global batch; the
    training is that of one process at the same global batch. Rank 0 writes the checkpoint.
    """
    import torch.multiprocessing as mp

    if config.train.batch_size % processes:
        raise InputError(
            f"train.batch_size {config.train.batch_size} does not divide among {processes} "
            "training processes"
        )
    port = free_port()
    log.info("training on %d processes (127.0.0.1:%d)", processes, port)
    mp.spawn(
        _train_rank,
        args=(processes, port, list(crops), config, out, init_from),
        nprocs=processes,
        join=True,
    )
    training = json.loads((out / TRAINING_FILE).read_text())
    losses = tuple(float(x) for x in training["losses"])
    return TrainResult(
        out,
        len(losses),
        float(training["final_loss"]),
        float(training["seconds"]),
        losses,
        str(training["precision"]),
    )


def _train_rank(
    rank: int,
    world: int,
    port: int,
    crops: list[TrainingCrop],
    config: Config,
    out: Path,
    init_from: Path | None,
) -> None:
    """Train as process rank of world (what torch.multiprocessing.spawn runs)."""
    import torch
    import torch.distributed as dist

    cuda = training_device(config).type == "cuda"
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    try:
        train_model(crops, config, out, init_from=init_from, shard=Shard(rank, world))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
