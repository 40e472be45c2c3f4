"""Volumes and crop labels on disk, as zarr v3 with OME-Zarr (NGFF 0.5) metadata.

A volume group::

    NAME.zarr/            OME image group, axes c, z, y, x
      0                   raw (C, Z, Y, X), chunked for crop-sized reads
      labels/             OME labels group
        gt/0              hidden ground truth (Z, Y, X) uint32, 0 = background
        gt/overlaps       (K, 4) int64 rows (z, y, x, id): extra memberships of overlap voxels

A crop label group (one per ingested annotation)::

    labels/crop-ID/NAME.zarr/
      labels              (Z, Y, X) uint32 instance ids, crop coordinates
      mask                (Z, Y, X) bool, True where the annotator labeled
      overlaps            (K, 4) int64, as above
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.core.instances import Instances
from activeseg.data.sources import LabelSource, RawSource
from activeseg.durable import partial_name, replace_durably
from activeseg.errors import VolumeFormatError

NGFF_VERSION = "0.5"
RAW_PATH = "0"
GT_PATH = "labels/gt"


def _axes(names: str) -> list[dict[str, str]]:
    return [
        {"name": n, "type": "channel"}
        if n == "c"
        else {"name": n, "type": "space", "unit": "micrometer"}
        for n in names
    ]


def _multiscales(name: str, axes: str, scale: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "axes": _axes(axes),
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }


def write_volume(
    path: Path,
    raw: RawSource,
    *,
    ground_truth: LabelSource | None,
    voxel_size: tuple[float, float, float],
    chunks: tuple[int, int, int],
) -> None:
    """Write a volume group slab by slab: raw (C, Z, Y, X) and optional ground truth.

    Memory holds one slab of ``chunks[0]`` z-planes at a time, whatever the volume's size.
    """
    channels, *spatial = raw.shape
    chunk = tuple(min(c, s) for c, s in zip(chunks, spatial, strict=True))
    root = zarr.open_group(path, mode="w-")
    root.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [_multiscales(path.stem, "czyx", [1.0, *voxel_size])],
    }
    out = root.create_array(
        RAW_PATH,
        shape=raw.shape,
        dtype=raw.dtype,
        chunks=(channels, *chunk),
        dimension_names=["c", "z", "y", "x"],
    )
    for z0, z1 in _slabs(spatial[0], chunk[0]):
        out[:, z0:z1] = raw.slab(z0, z1)
    if ground_truth is not None:
        _write_ground_truth(root, ground_truth, voxel_size, chunk)


def _slabs(depth: int, step: int) -> list[tuple[int, int]]:
    return [(z0, min(z0 + step, depth)) for z0 in range(0, depth, step)]


def _write_ground_truth(
    root: zarr.Group,
    truth: LabelSource,
    voxel_size: tuple[float, float, float],
    chunk: tuple[int, ...],
) -> None:
    labels = root.require_group("labels")
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["gt"]}
    gt = labels.require_group("gt")
    gt.attrs["ome"] = {
        "version": NGFF_VERSION,
        "image-label": {"source": {"image": "../../"}},
        "multiscales": [_multiscales("gt", "zyx", list(voxel_size))],
    }
    image = gt.create_array(
        "0", shape=truth.shape, dtype=np.uint32, chunks=chunk, dimension_names=["z", "y", "x"]
    )
    rows = []
    for z0, z1 in _slabs(truth.shape[0], chunk[0]):
        slab = truth.slab(z0, z1)
        image[z0:z1] = slab.labels
        rows.append(slab.overlaps + np.array([z0, 0, 0, 0], np.int64))
    overlaps = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)
    gt.create_array("overlaps", data=overlaps, chunks=(max(len(overlaps), 1), 4))


def _open(path: Path) -> zarr.Group:
    try:
        return zarr.open_group(path, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise VolumeFormatError(f"{path} is not a readable activeseg volume: {exc}") from exc


def _array(group: zarr.Group, key: str) -> zarr.Array:
    node = group.get(key)
    if not isinstance(node, zarr.Array):
        raise VolumeFormatError(f"{group.store_path} has no array {key!r}")
    return node


def raw_array(path: Path) -> zarr.Array:
    """Return the lazy raw (C, Z, Y, X) array of a volume group."""
    return _array(_open(path), RAW_PATH)


def read_raw(path: Path, box: tuple[slice, slice, slice] | None = None) -> npt.NDArray[Any]:
    """Return raw (C, z, y, x) data of a volume, whole or inside a (z, y, x) box."""
    array = raw_array(path)
    return np.asarray(array[(slice(None), *box)] if box else array[...])


def has_ground_truth(path: Path) -> bool:
    """Return whether a volume group holds ground truth."""
    return f"{GT_PATH}/0" in _open(path)


def read_ground_truth(path: Path, box: tuple[slice, slice, slice] | None = None) -> Instances:
    """Return a volume's hidden ground truth, whole or inside a (z, y, x) box."""
    root = _open(path)
    if f"{GT_PATH}/0" not in root:
        raise VolumeFormatError(f"{path} holds no ground truth ({GT_PATH})")
    image = _array(root, f"{GT_PATH}/0")
    whole = tuple(slice(0, n) for n in image.shape)
    labels = np.asarray(image[box or whole], dtype=np.uint32)
    overlaps = np.asarray(_array(root, f"{GT_PATH}/overlaps")[...], dtype=np.int64).reshape(-1, 4)
    if box is None:
        return Instances(labels, overlaps)
    starts = np.array([s.start or 0 for s in box])
    inside = np.all((overlaps[:, :3] >= starts) & (overlaps[:, :3] < starts + labels.shape), axis=1)
    return Instances(labels, overlaps[inside] - np.array([*starts, 0]))


@dataclass(frozen=True)
class CropLabels:
    """Sparse labels of one crop: instance ids, where they were annotated, and overlaps.

    labels: (Z, Y, X) uint32; mask: (Z, Y, X) bool; overlaps: (K, 4) int64 (z, y, x, id).
    """

    labels: npt.NDArray[np.uint32]
    mask: npt.NDArray[np.bool_]
    overlaps: npt.NDArray[np.int64]

    def instances(self) -> Instances:
        """Return the labels as (possibly overlapping) instances."""
        return Instances(self.labels, self.overlaps)


def write_crop_labels(path: Path, labels: CropLabels) -> None:
    """Write a crop's labels as a zarr group; the group appears complete and on disk, or not
    at all. A group already at ``path`` is kept: writes are renamed into place whole, and each
    caller names a version by what determines its content (an annotation and its time, a task
    answered from ground truth), so it holds these labels already. Nothing is deleted."""
    if path.exists():
        return
    partial = partial_name(path)
    root = zarr.open_group(partial, mode="w-")
    root.create_array("labels", data=labels.labels.astype(np.uint32))
    root.create_array("mask", data=labels.mask.astype(bool))
    overlaps = labels.overlaps.astype(np.int64).reshape(-1, 4)
    root.create_array("overlaps", data=overlaps, chunks=(max(len(overlaps), 1), 4))
    replace_durably(partial, path)


def read_crop_labels(path: Path) -> CropLabels:
    """Return the labels stored in a crop label group."""
    root = _open(path)
    return CropLabels(
        labels=np.asarray(_array(root, "labels")[...], dtype=np.uint32),
        mask=np.asarray(_array(root, "mask")[...], dtype=bool),
        overlaps=np.asarray(_array(root, "overlaps")[...], dtype=np.int64).reshape(-1, 4),
    )
