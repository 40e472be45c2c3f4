"""Repository functions for volumes and their crops."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.errors import InputError, NotFoundError, StateError
from activeseg.pool.models import Crop, CropStatus, Split, Volume, clip
from activeseg.pool.records import CropInfo, VolumeInfo


def _volume_info(row: Volume) -> VolumeInfo:
    return VolumeInfo(
        id=row.id,
        name=row.name,
        path=row.path,
        split=row.split.value,
        channels=row.channels,
        shape=(row.shape[0], row.shape[1], row.shape[2]),
        voxel_size=(row.voxel_size[0], row.voxel_size[1], row.voxel_size[2]),
        has_ground_truth=row.has_ground_truth,
        source=row.source,
    )


def _crop_info(row: Crop) -> CropInfo:
    return CropInfo(
        id=row.id,
        volume_id=row.volume_id,
        volume_name=row.volume.name,
        split=row.volume.split.value,
        origin=(row.z0, row.y0, row.x0),
        end=(row.z1, row.y1, row.x1),
        foreground=row.foreground,
        status=row.status.value,
        labeled_round=row.labeled_round,
        label_path=row.label_path,
        skip_reason=row.skip_reason,
    )


def add_volume(
    session: Session,
    *,
    name: str,
    path: str,
    split: str,
    channels: int,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    has_ground_truth: bool,
    source: str,
) -> VolumeInfo:
    """Register a volume and return it; names are unique within a project."""
    if session.scalar(select(Volume.id).where(Volume.name == name)) is not None:
        raise InputError(f"a volume named {name!r} is already registered in this project")
    try:
        split_value = Split(split)
    except ValueError:
        raise InputError(f"split must be one of pool, val, test; got {split!r}") from None
    row = Volume(
        name=name,
        path=path,
        split=split_value,
        channels=channels,
        shape=list(shape),
        voxel_size=list(voxel_size),
        has_ground_truth=has_ground_truth,
        source=source,
    )
    session.add(row)
    session.flush()
    return _volume_info(row)


def list_volumes(session: Session, split: str | None = None) -> list[VolumeInfo]:
    """Return the registered volumes (of one split, if given), in registration order."""
    query = select(Volume).order_by(Volume.id)
    if split is not None:
        query = query.where(Volume.split == Split(split))
    return [_volume_info(row) for row in session.scalars(query)]


def get_volume(session: Session, name: str) -> VolumeInfo:
    """Return the volume with this name, or raise NotFoundError."""
    row = session.scalar(select(Volume).where(Volume.name == name))
    if row is None:
        raise NotFoundError(f"no volume named {name!r} in this project")
    return _volume_info(row)


def add_crops(
    session: Session,
    volume_id: int,
    boxes: Iterable[tuple[tuple[int, int, int], tuple[int, int, int], float]],
) -> list[CropInfo]:
    """Add crops ``(origin, end, foreground_fraction)`` of a volume and return them."""
    volume = session.get(Volume, volume_id)
    if volume is None:
        raise NotFoundError(f"no volume with id {volume_id}")
    rows = [
        Crop(volume=volume, z0=o[0], y0=o[1], x0=o[2], z1=e[0], y1=e[1], x1=e[2], foreground=fg)
        for o, e, fg in boxes
    ]
    session.add_all(rows)
    session.flush()
    return [_crop_info(row) for row in rows]


def list_crops(
    session: Session,
    *,
    status: str | None = None,
    split: str | None = None,
    volume: str | None = None,
) -> list[CropInfo]:
    """Return crops filtered by status, split and volume name, ordered by id."""
    query = select(Crop).join(Crop.volume).order_by(Crop.id)
    if status is not None:
        query = query.where(Crop.status == CropStatus(status))
    if split is not None:
        query = query.where(Volume.split == Split(split))
    if volume is not None:
        query = query.where(Volume.name == volume)
    return [_crop_info(row) for row in session.scalars(query)]


def get_crop(session: Session, crop_id: int) -> CropInfo:
    """Return one crop, or raise NotFoundError."""
    row = session.get(Crop, crop_id)
    if row is None:
        raise NotFoundError(f"no crop with id {crop_id} in this project")
    return _crop_info(row)


def crop_counts(session: Session) -> dict[str, dict[str, int]]:
    """Return crop counts as ``{split: {status: n}}`` (every status present, zeros included)."""
    query = (
        select(Volume.split, Crop.status, func.count())
        .join(Crop.volume)
        .group_by(Volume.split, Crop.status)
    )
    counts: dict[str, Counter[str]] = {}
    for split, status, n in session.execute(query):
        counts.setdefault(split.value, Counter())[status.value] = n
    return {
        split: {status.value: counts[split][status.value] for status in CropStatus}
        for split in sorted(counts)
    }


def set_crop_status(
    session: Session,
    crop_id: int,
    status: str,
    *,
    labeled_round: int | None = None,
    label_path: str | None = None,
    skip_reason: str | None = None,
) -> CropInfo:
    """Move a crop to a new status, recording the label path, round or skip reason."""
    row = session.get(Crop, crop_id)
    if row is None:
        raise NotFoundError(f"no crop with id {crop_id} in this project")
    new = CropStatus(status)
    if new is CropStatus.LABELED and label_path is None:
        raise StateError(f"crop {crop_id}: a labeled crop needs a label path")
    row.status = new
    row.labeled_round = labeled_round if new is CropStatus.LABELED else None
    row.label_path = label_path if new is CropStatus.LABELED else None
    row.skip_reason = clip(skip_reason, Crop.skip_reason) if new is CropStatus.SKIPPED else None
    session.flush()
    return _crop_info(row)
