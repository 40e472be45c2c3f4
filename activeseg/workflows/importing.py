"""Registering volumes in a project: zarr on disk and rows in the pool, all or nothing."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from activeseg.core.instances import Instances
from activeseg.data.crops import bright_fraction, bright_threshold, tile_boxes
from activeseg.data.importers import SourceVolume, read_source
from activeseg.data.volumes import CropLabels, read_raw, write_crop_labels, write_volume
from activeseg.errors import InputError
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, VolumeInfo
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def volume_name(path: Path) -> str:
    """Return the default volume name of a file: its name without zarr/tiff/hdf5 suffixes."""
    name = path.name
    for suffix in (".zarr", ".tiff", ".tif", ".hdf5", ".h5", ".hdf"):
        name = name.removesuffix(suffix)
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
) -> VolumeInfo:
    """Import one image (and its labels) into the project and tile it into crops.

    Ground truth stays hidden from training unless ``as_labels``: then every crop of the volume
    is labeled with it. On any error the project is left exactly as it was.
    """
    name = name or volume_name(path)
    with project.session() as session:
        if any(v.name == name for v in pool_volumes.list_volumes(session)):
            raise InputError(f"{path}: a volume named {name!r} is already in this project")
    if as_labels and labels_key is None and fmt != "fisbe":
        raise InputError(f"{path}: --as-labels needs labels (--labels KEY)")
    _say(progress, f"reading {path}")
    source = read_source(path, fmt, raw_key=raw_key, labels_key=labels_key)
    if as_labels and source.instances is None:
        raise InputError(f"{path}: --as-labels given but the file holds no labels")
    final = project.volumes_dir / f"{name}.zarr"
    partial = project.volumes_dir / f".{name}.zarr.partial"
    written: list[Path] = [partial]
    try:
        _say(progress, f"writing {final.name}")
        project.volumes_dir.mkdir(parents=True, exist_ok=True)
        write_volume(
            partial,
            source.raw,
            ground_truth=source.instances,
            voxel_size=source.voxel_size,
            chunks=project.config.crops.size,
        )
        with project.session() as session:
            info = _register(project, session, name, final, partial, source, split, fmt, path)
            crops = _add_crops(project, session, info, partial)
            if as_labels and source.instances is not None:
                written += _label_crops(project, session, crops, source.instances)
            partial.rename(final)
            written[0] = final
    except BaseException:
        for leftover in written:
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    _say(progress, f"registered {name}: {len(crops)} crops")
    return info


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def _register(
    project: Project,
    session: Session,
    name: str,
    final: Path,
    partial: Path,
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
        has_ground_truth=source.instances is not None,
        source=f"{fmt}:{path.resolve()}",
    )


def _add_crops(
    project: Project, session: Session, volume: VolumeInfo, zarr_path: Path
) -> list[CropInfo]:
    crops = project.config.crops
    raw = read_raw(zarr_path)
    threshold = bright_threshold(raw)
    boxes = []
    for origin, end in tile_boxes(volume.shape, crops.size, crops.stride):
        box = tuple(slice(a, b) for a, b in zip(origin, end, strict=True))
        fraction = bright_fraction(raw[(slice(None), *box)], threshold)
        if fraction >= crops.min_foreground:
            boxes.append((origin, end, fraction))
    return pool_volumes.add_crops(session, volume.id, boxes)


def _label_crops(
    project: Project, session: Session, crops: list[CropInfo], instances: Instances
) -> list[Path]:
    written = []
    for crop in crops:
        truth = instances.crop(crop.box)
        path = project.crop_label_path(crop.id, "import")
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(path.parent)
        labels = CropLabels(truth.labels, np.ones(crop.shape, bool), truth.overlaps)
        write_crop_labels(path, labels)
        pool_volumes.set_crop_status(session, crop.id, "labeled", label_path=project.relative(path))
    return written
