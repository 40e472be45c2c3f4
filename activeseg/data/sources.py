"""Lazy views of an image and its labels in a file, read one z-slab at a time.

Importing a FISBe-size volume (400 × 700 × 700 × 3) must not hold it in memory: a
:class:`RawSource` gives (C, Z, Y, X) slabs of any stored array-like (zarr, h5py, numpy) and a
:class:`LabelSource` gives the labels of the same slabs as :class:`Instances`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.core.instances import Instances
from activeseg.errors import VolumeFormatError

MAX_CHANNELS = 8
MAX_LABEL_ID = np.iinfo(np.uint32).max
VoxelSize = tuple[float, float, float]


@dataclass(frozen=True)
class RawSource:
    """A stored raw image seen as (C, Z, Y, X), read by z-slabs.

    array: any array-like with ``shape``, ``dtype`` and slicing; 3-D (Z, Y, X), or 4-D with the
    channel axis ``channel_axis`` (0 or 3). ``where`` names the file and dataset in errors.
    """

    array: Any
    channel_axis: int | None
    where: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Return the (C, Z, Y, X) shape."""
        shape = tuple(int(n) for n in self.array.shape)
        if self.channel_axis is None:
            return (1, *shape)  # type: ignore[return-value]
        rest = [n for axis, n in enumerate(shape) if axis != self.channel_axis]
        return (shape[self.channel_axis], *rest)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype[Any]:
        """Return the stored dtype."""
        return np.dtype(self.array.dtype)

    def slab(self, z0: int, z1: int) -> npt.NDArray[Any]:
        """Return raw[:, z0:z1] as a (C, z1 - z0, Y, X) array; refuse NaN or infinities."""
        return self[slice(None), slice(z0, z1), slice(None), slice(None)]

    def __getitem__(self, key: tuple[slice, slice, slice, slice]) -> npt.NDArray[Any]:
        """Return raw[c, z, y, x] (channels first) for a box of slices, so tiles can read it;
        refuse NaN or infinities."""
        channels, *spatial = key
        if self.channel_axis is None:
            data = np.asarray(self.array[tuple(spatial)])[None][channels]
        elif self.channel_axis == 0:
            data = np.asarray(self.array[(channels, *spatial)])
        else:
            data = np.moveaxis(np.asarray(self.array[(*spatial, channels)]), -1, 0)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            z0, z1, _ = spatial[0].indices(self.shape[1])
            raise VolumeFormatError(
                f"{self.where}: raw holds NaN or infinite values in z {z0}..{z1 - 1}; "
                f"activeseg cannot normalize or train on them (replace them first)"
            )
        return data


GUESS = -1


def raw_source(array: Any, where: str, *, channel_axis: int | None = GUESS) -> RawSource:
    """Return a raw source after checking the dtype and shape (nothing is read).

    channel_axis: 0 for (C, Z, Y, X), None for (Z, Y, X), or GUESS when the file does not
    say: 4-D data then has its channels first if the first axis has at most MAX_CHANNELS
    entries, else last.
    """
    dtype, shape = np.dtype(array.dtype), tuple(int(n) for n in array.shape)
    if dtype.kind not in "uif":
        raise VolumeFormatError(f"{where}: raw data must be integer or float, got {dtype}")
    if channel_axis != GUESS and (len(shape) == 3) != (channel_axis is None):
        raise VolumeFormatError(f"{where}: raw of shape {shape} has no (C,) Z, Y, X axes")
    if channel_axis == 0 and shape[0] > MAX_CHANNELS:
        raise VolumeFormatError(f"{where}: {shape[0]} channels, at most {MAX_CHANNELS} allowed")
    if channel_axis == 0:
        source = RawSource(array, 0, where)
    elif len(shape) == 3:
        source = RawSource(array, None, where)
    elif len(shape) == 4 and shape[0] <= MAX_CHANNELS:
        source = RawSource(array, 0, where)
    elif len(shape) == 4 and shape[-1] <= MAX_CHANNELS:
        source = RawSource(array, 3, where)
    else:
        raise VolumeFormatError(
            f"{where}: raw data must be (Z, Y, X) or (C, Z, Y, X) with at most {MAX_CHANNELS} "
            f"channels, got shape {shape}"
        )
    if min(source.shape) < 1:
        raise VolumeFormatError(f"{where}: raw shape {source.shape} (C, Z, Y, X) is empty")
    return source


@dataclass(frozen=True)
class LabelSource:
    """Stored labels read by z-slabs: a (Z, Y, X) label image, or a (N, Z, Y, X) stack of
    masks in which channel k is instance k + 1 wherever it is nonzero (the FISBe layout)."""

    array: Any
    stacked: bool
    where: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """Return the (Z, Y, X) shape."""
        return tuple(int(n) for n in self.array.shape[-3:])  # type: ignore[return-value]

    def slab(self, z0: int, z1: int) -> Instances:
        """Return the instances of z0:z1 (overlap rows in slab coordinates)."""
        if not self.stacked:
            data = np.asarray(self.array[z0:z1])
            if data.size and (data.min() < 0 or data.max() > MAX_LABEL_ID):
                raise VolumeFormatError(
                    f"{self.where}: label ids must lie in 0..{MAX_LABEL_ID}, found "
                    f"{data.min()}..{data.max()} in z {z0}..{z1 - 1}"
                )
            return Instances.from_labels(data.astype(np.uint32))
        image = np.zeros((z1 - z0, *self.shape[1:]), np.uint32)
        overlaps = []
        for channel in range(self.array.shape[0]):  # one channel at a time: one label image
            mask = np.asarray(self.array[channel, z0:z1]) != 0
            shared = mask & (image > 0)
            if shared.any():
                coords = np.argwhere(shared)
                overlaps.append(np.column_stack([coords, np.full(len(coords), channel + 1)]))
            image[mask & ~shared] = channel + 1
        rows = np.concatenate(overlaps) if overlaps else np.zeros((0, 4))
        return Instances(image, rows.astype(np.int64).reshape(-1, 4))


def label_source(array: Any, spatial: tuple[int, ...], where: str) -> LabelSource:
    """Return a label source after checking dtype and shape against the raw's (Z, Y, X)."""
    dtype, shape = np.dtype(array.dtype), tuple(int(n) for n in array.shape)
    if dtype.kind not in "uib":
        raise VolumeFormatError(f"{where}: labels must be integers, got {dtype}")
    if len(shape) not in (3, 4) or shape[-3:] != tuple(spatial):
        raise VolumeFormatError(
            f"{where}: labels of shape {shape} do not match the raw data's spatial "
            f"shape {tuple(spatial)}"
        )
    return LabelSource(array, len(shape) == 4, where)


def voxel_size(value: Any, where: str, default: VoxelSize = (1.0, 1.0, 1.0)) -> VoxelSize:
    """Return a stored (z, y, x) voxel size as 3 positive finite floats (``default`` if None)."""
    if value is None:
        return default
    try:
        sizes = [] if isinstance(value, str | bytes) else [float(v) for v in value]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise VolumeFormatError(f"{where}: voxel size must be 3 positive numbers, got {value!r}")
    return (sizes[0], sizes[1], sizes[2])
