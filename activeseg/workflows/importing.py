"""Registering volumes in a project: zarr on disk and rows in the pool, all or nothing.

The image is copied slab by slab, so memory does not grow with the volume. Imports hold the
project's ``import`` lock, write under a name no other process uses, and are committed only
after the copy is on disk; a refused or interrupted import leaves the project as it was.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from activeseg.data.crops import bright_fraction, bright_threshold, tile_boxes
from activeseg.data.importers import SourceVolume, read_source
from activeseg.data.ome import Placement
from activeseg.data.volumes import (
    CropLabels,
    raw_array,
    read_ground_truth,
    write_crop_labels,
    write_volume,
)
from activeseg.durable import fsync_tree, partial_name, remove_stale_partials
from activeseg.errors import InputError
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, VolumeInfo
from activeseg.workflows.locks import hold_lock
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
LOCK = "import"
LOCK_WAIT_SECONDS = 600.0
THRESHOLD_SAMPLE = 1_000_000


@dataclass(frozen=True)
class ImportedVolume:
    """A registered volume, its number of candidate crops, and why there are none (if so)."""

    volume: VolumeInfo
    crops: int
    note: str | None = None

    def as_dict(self) -> dict[str, object]:
        """Return what ``import --json`` prints for this volume."""
        v = self.volume
        return {"name": v.name, "shape": list(v.shape), "split": v.split, "crops": self.crops,
                "note": self.note}  # fmt: skip


def volume_name(path: Path) -> str:
    """Return the default volume name of a file: its name without zarr/tiff/hdf5 suffixes."""
    name = path.name
    for suffix in (".zarr", ".tiff", ".tif", ".hdf5", ".h5", ".hdf"):
        name = name.removesuffix(suffix)
    return name


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe volume name (letters, digits, ``_.-``), else raise."""
    if not NAME_PATTERN.fullmatch(name) or name.endswith((".partial", ".zarr")):
        raise InputError(
            f"volume name {name!r} is not allowed: use up to 200 letters, digits, '_', '.' "
            f"and '-', not starting with '.' or '-' (give one with --name)"
        )
    return name


def import_volume(
    project: Project,
    path: Path,
    fmt: str,
    *,
    split: str = "pool",
    as_labels: bool = False,
    name: str | None = None,
    raw_key: str | None = None,
    labels_key: str | None = None,
    progress: Progress | None = None,
) -> ImportedVolume:
    """Import one image (and its labels) into the project and tile it into crops.

    Ground truth stays hidden from training unless ``as_labels``: then every crop of the volume
    is labeled with it. On any error the project is left exactly as it was.
    """
    name = check_name(name or volume_name(path))
    if as_labels and labels_key is None and fmt != "fisbe":
        raise InputError(f"{path}: --as-labels needs labels (--labels KEY)")
    _say(progress, f"reading {path}")
    source = read_source(path, fmt, raw_key=raw_key, labels_key=labels_key)
    if as_labels and source.labels is None:
        raise InputError(f"{path}: --as-labels given but the file holds no labels")
    with hold_lock(project.root, LOCK, wait_seconds=LOCK_WAIT_SECONDS):
        _check_fits(project, path, name, source)
        return _write_and_register(project, path, fmt, name, source, split, as_labels, progress)


def _check_fits(project: Project, path: Path, name: str, source: SourceVolume) -> None:
    """Raise InputError unless the name is free and the channels match the project's."""
    channels = source.raw.shape[0]
    with project.session() as session:
        volumes = pool_volumes.list_volumes(session)
    if any(v.name == name for v in volumes):
        raise InputError(f"{path}: a volume named {name!r} is already in this project")
    expected = project.config.model.in_channels
    if volumes and volumes[0].channels != channels:
        raise InputError(
            f"{path} has {channels} channel(s), but this project's volumes have "
            f"{volumes[0].channels} (fixed by its first volume, {volumes[0].name!r})"
        )
    if isinstance(expected, int) and expected != channels:
        raise InputError(
            f"{path} has {channels} channel(s), but the project's model.in_channels is "
            f"{expected}; import data with {expected} channels, or start a project whose "
            f"config sets model.in_channels: {channels}"
        )


def _write_and_register(
    project: Project,
    path: Path,
    fmt: str,
    name: str,
    source: SourceVolume,
    split: str,
    as_labels: bool,
    progress: Progress | None,
) -> ImportedVolume:
    final = project.volumes_dir / f"{name}.zarr"
    project.volumes_dir.mkdir(parents=True, exist_ok=True)
    _recover_leftovers(project, final)
    partial = partial_name(final)
    written: list[Path] = [partial]
    try:
        _say(progress, f"writing {final.name}")
        write_volume(
            partial,
            source.raw,
            name=name,
            ground_truth=source.labels,
            voxel_size=source.voxel_size,
            chunks=project.config.crops.size,
        )
        fsync_tree(partial)
        with project.session() as session:
            info = _register(project, session, name, final, source, split, fmt, path)
            crops = _add_crops(project, session, info, partial)
            if as_labels:
                written += _label_crops(project, session, crops, partial, info.voxel_size)
            partial.rename(final)
            written[0] = final
            fsync_tree(final.parent, files=False)
    except BaseException:
        for leftover in written:
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    note = None if crops else _why_no_crops(project)
    _say(progress, f"registered {name}: {len(crops)} crops" + (f" ({note})" if note else ""))
    return ImportedVolume(info, len(crops), note)


def _recover_leftovers(project: Project, final: Path) -> None:
    """Remove what an interrupted import of this name left: a folder the ledger does not
    reference (killed between rename and commit) and partial copies of dead processes."""
    remove_stale_partials(project.volumes_dir, f".{final.name}.")
    if final.exists():
        log.warning("removing %s: an interrupted import left it, the pool does not list it", final)
        shutil.rmtree(final)


def _why_no_crops(project: Project) -> str:
    crops = project.config.crops
    return (
        f"no crop has at least crops.min_foreground = {crops.min_foreground} of its voxels "
        f"brighter than the volume's background; lower it in activeseg.yaml if the neurons are dim"
    )


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def _register(
    project: Project,
    session: Session,
    name: str,
    final: Path,
    source: SourceVolume,
    split: str,
    fmt: str,
    path: Path,
) -> VolumeInfo:
    channels, *spatial = source.raw.shape
    return pool_volumes.add_volume(
        session,
        name=name,
        path=project.relative(final),
        split=split,
        channels=channels,
        shape=spatial,
        voxel_size=source.voxel_size,
        has_ground_truth=source.labels is not None,
        source=f"{fmt}:{path.resolve()}",
    )


def _add_crops(
    project: Project, session: Session, volume: VolumeInfo, zarr_path: Path
) -> list[CropInfo]:
    """Register the crops with enough bright voxels; each crop is read on its own."""
    crops = project.config.crops
    raw = raw_array(zarr_path)
    threshold = bright_threshold(_grid_sample(raw))
    boxes = []
    for origin, end in tile_boxes(volume.shape, crops.size, crops.stride):
        box = tuple(slice(a, b) for a, b in zip(origin, end, strict=True))
        fraction = bright_fraction(np.asarray(raw[(slice(None), *box)]), threshold)
        if fraction >= crops.min_foreground:
            boxes.append((origin, end, fraction))
    return pool_volumes.add_crops(session, volume.id, boxes)


def _grid_sample(raw: object) -> np.ndarray:
    """Return a regular grid of about THRESHOLD_SAMPLE voxels of a (C, Z, Y, X) zarr array
    (every voxel of a small volume)."""
    shape = raw.shape  # type: ignore[attr-defined]
    voxels = int(np.prod(shape[1:]))
    step = max(1, round((voxels / THRESHOLD_SAMPLE) ** (1 / 3)))
    return np.asarray(raw[:, ::step, ::step, ::step])  # type: ignore[index]


def _label_crops(
    project: Project,
    session: Session,
    crops: list[CropInfo],
    volume: Path,
    voxel_size: tuple[float, float, float],
) -> list[Path]:
    written = []
    for crop in crops:
        truth = read_ground_truth(volume, crop.box)
        path = project.crop_label_path(crop.id, "import")
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(path.parent)
        labels = CropLabels(truth.labels, np.ones(crop.shape, bool), truth.overlaps)
        write_crop_labels(path, labels, Placement(voxel_size, crop.origin))
        pool_volumes.set_crop_status(session, crop.id, "labeled", label_path=project.relative(path))
    return written
