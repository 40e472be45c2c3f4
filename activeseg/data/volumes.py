"""Volumes and crop labels on disk, as zarr v3 with OME-Zarr (NGFF 0.5) metadata.

A volume group::

    NAME.zarr/            OME image group NAME, axes c, z, y, x; channel colours (omero)
      0                   raw (C, Z, Y, X), chunked for crop-sized reads
      1, 2, …             downsampled levels of a large volume (for viewers)
      labels/             OME labels group
        gt/0              hidden ground truth (Z, Y, X) uint32, 0 = background (gt/1, … levels)
        gt/overlaps       (K, 4) int64 rows (z, y, x, id): extra memberships of overlap voxels

A crop label group (one per ingested annotation)::

    labels/crop-ID/NAME.zarr/   OME label image placed at the crop's origin in its volume
      0                   (Z, Y, X) uint32 instance ids, crop coordinates ("labels" before)
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
from activeseg.data import ome
from activeseg.data.sources import LabelSource, RawSource
from activeseg.durable import partial_name, replace_durably
from activeseg.errors import VolumeFormatError

RAW_PATH = "0"
GT_PATH = "labels/gt"
# A crop label group's label image; "labels" is reserved in an OME image for its labels group.
CROP_LABELS = "0"
LEGACY_CROP_LABELS = "labels"
# Volumes wider than this (in Y or X) get downsampled levels for viewers (BENCHMARKS.md has
# none: the levels cost one more pass over the written data).
PYRAMID_MIN_SIZE = 512
# Voxels per channel sampled for the display window (its end is their 99.9th percentile).
WINDOW_SAMPLE = 1_000_000


def write_volume(
    path: Path,
    raw: RawSource,
    *,
    name: str,
    ground_truth: LabelSource | None,
    voxel_size: tuple[float, float, float],
    chunks: tuple[int, int, int],
    pyramid_min_size: int = PYRAMID_MIN_SIZE,
) -> None:
    """Write a volume group slab by slab: raw (C, Z, Y, X) and optional ground truth, as an
    OME-Zarr image named ``name`` with channel colours, display windows and, for volumes
    wider than ``pyramid_min_size``, downsampled levels (the labels get the same levels).

    Memory holds one slab of ``chunks[0]`` z-planes at a time, whatever the volume's size.
    """
    channels, *spatial = raw.shape
    chunk = tuple(min(c, s) for c, s in zip(chunks, spatial, strict=True))
    factors = ome.pyramid_factors(spatial, pyramid_min_size)
    placement = ome.Placement(voxel_size)
    root = zarr.open_group(path, mode="w-")
    out = root.create_array(
        RAW_PATH,
        shape=raw.shape,
        dtype=raw.dtype,
        chunks=(channels, *chunk),
        dimension_names=["c", "z", "y", "x"],
    )
    window = _Window(channels, raw.shape)
    for z0, z1 in _slabs(spatial[0], chunk[0]):
        slab = raw.slab(z0, z1)
        out[:, z0:z1] = slab
        window.add(slab)
    ome.write_levels(root, len(factors), labels=False, slab=chunk[0], names="czyx")
    paths = [str(k) for k in range(len(factors))]
    root.attrs["ome"] = {
        **ome.image_attrs(name, "czyx", placement, paths, factors),
        "omero": ome.omero(window.windows()),
    }
    if ground_truth is not None:
        _write_ground_truth(root, ground_truth, placement, chunk, factors)


class _Window:
    """Running per-channel data range and a sample of voxels, for the display windows."""

    def __init__(self, channels: int, shape: tuple[int, ...]) -> None:
        voxels = int(np.prod(shape[1:]))
        self.step = max(1, round((voxels / WINDOW_SAMPLE) ** (1 / 3)))
        self.low = np.full(channels, np.inf)
        self.high = np.full(channels, -np.inf)
        self.samples: list[npt.NDArray[Any]] = []

    def add(self, slab: npt.NDArray[Any]) -> None:
        flat = slab.reshape(slab.shape[0], -1)
        self.low = np.minimum(self.low, flat.min(axis=1))
        self.high = np.maximum(self.high, flat.max(axis=1))
        step = self.step
        self.samples.append(slab[:, ::step, ::step, ::step].reshape(slab.shape[0], -1))

    def windows(self) -> list[tuple[float, float, float, float]]:
        sample = np.concatenate(self.samples, axis=1).astype(np.float64)
        ends = np.percentile(sample, 99.9, axis=1)
        return [
            (float(lo), float(hi), float(lo), float(max(end, lo + 1e-6)))
            for lo, hi, end in zip(self.low, self.high, ends, strict=True)
        ]


def _slabs(depth: int, step: int) -> list[tuple[int, int]]:
    return [(z0, min(z0 + step, depth)) for z0 in range(0, depth, step)]


def _write_ground_truth(
    root: zarr.Group,
    truth: LabelSource,
    placement: ome.Placement,
    chunk: tuple[int, ...],
    factors: list[int],
) -> None:
    labels = root.require_group("labels")
    labels.attrs["ome"] = {"version": ome.NGFF_VERSION, "labels": ["gt"]}
    gt = labels.require_group("gt")
    image = gt.create_array(
        "0", shape=truth.shape, dtype=np.uint32, chunks=chunk, dimension_names=["z", "y", "x"]
    )
    rows = []
    ids: set[int] = set()
    for z0, z1 in _slabs(truth.shape[0], chunk[0]):
        slab = truth.slab(z0, z1)
        image[z0:z1] = slab.labels
        ids.update(int(i) for i in slab.ids())
        rows.append(slab.overlaps + np.array([z0, 0, 0, 0], np.int64))
    overlaps = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)
    gt.create_array("overlaps", data=overlaps, chunks=(max(len(overlaps), 1), 4))
    ome.write_levels(gt, len(factors), labels=True, slab=chunk[0], names="zyx")
    gt.attrs["ome"] = ome.label_attrs("gt", placement, sorted(ids), levels=factors)


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


def crop_labels_key(group: zarr.Group) -> str:
    """Return the key of a crop label group's label image: "0" (OME-Zarr, written now) or
    "labels" (groups written before, and label groups made by hand)."""
    return CROP_LABELS if CROP_LABELS in group else LEGACY_CROP_LABELS


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


def write_crop_labels(
    path: Path, labels: CropLabels, placement: ome.Placement | None = None
) -> None:
    """Write a crop's labels as a zarr group; the group appears complete and on disk, or not
    at all. A group already at ``path`` is kept: writes are renamed into place whole, and each
    caller names a version by what determines its content (an annotation and its time, a task
    answered from ground truth), so it holds these labels already. Nothing is deleted.

    The group is an OME-Zarr label image (its ``labels`` array) placed at the crop's origin in
    its volume (``placement``), so it overlays the volume's raw in a viewer.
    """
    if path.exists():
        return
    partial = partial_name(path)
    root = zarr.open_group(partial, mode="w-")
    zyx = ["z", "y", "x"]
    root.create_array(CROP_LABELS, data=labels.labels.astype(np.uint32), dimension_names=zyx)
    root.create_array("mask", data=labels.mask.astype(bool), dimension_names=zyx)
    overlaps = labels.overlaps.astype(np.int64).reshape(-1, 4)
    root.create_array("overlaps", data=overlaps, chunks=(max(len(overlaps), 1), 4))
    ids = [int(i) for i in labels.instances().ids()]
    root.attrs["ome"] = ome.label_attrs(
        path.stem, placement or ome.Placement(), ids, path=CROP_LABELS, source=None
    )
    replace_durably(partial, path)


def read_crop_labels(path: Path) -> CropLabels:
    """Return the labels stored in a crop label group."""
    root = _open(path)
    return CropLabels(
        labels=np.asarray(_array(root, crop_labels_key(root))[...], dtype=np.uint32),
        mask=np.asarray(_array(root, "mask")[...], dtype=bool),
        overlaps=np.asarray(_array(root, "overlaps")[...], dtype=np.int64).reshape(-1, 4),
    )
