"""The FISBe on-disk layout: a zarr v2 group holding a multi-colour volume and its neurons.

``volumes/raw`` is (C, Z, Y, X); ``volumes/gt_instances`` is (N, Z, Y, X) with one channel per
neuron, channel k holding value k+1 where neuron k is. Channels may overlap: a voxel can belong
to several neurons. In memory the neurons are :class:`Instances` with ids 1..N (channel k is id
k+1, whatever ids were written).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
import zarr.errors

from activeseg.core.instances import Instances
from activeseg.data.sources import (
    LabelSource,
    RawSource,
    VoxelSize,
    raw_source,
    voxel_size,
)
from activeseg.durable import claim_output
from activeseg.errors import VolumeFormatError

logger = logging.getLogger(__name__)

RAW = "volumes/raw"
GT_INSTANCES = "volumes/gt_instances"
VOXEL_SIZE_ATTR = "voxel_size"
# FISBe volumes are 0.44 um isotropic; files of the benchmark carry no voxel size attribute.
FISBE_VOXEL_SIZE = (0.44, 0.44, 0.44)
CHUNK_ZYX = (32, 128, 128)


@dataclass(frozen=True)
class FisbeVolume:
    """A volume read from the FISBe layout.

    raw: (C, Z, Y, X) array in its stored dtype (a stored (Z, Y, X) raw becomes C = 1).
    instances: the neurons, ids 1..N for channels 0..N-1 of ``gt_instances``.
    voxel_size: (z, y, x) in micrometres.
    """

    raw: npt.NDArray[Any]
    instances: Instances
    voxel_size: VoxelSize


def write_fisbe(
    path: Path,
    raw: npt.NDArray[Any],
    instances: Instances,
    voxel_size: VoxelSize = (1.0, 1.0, 1.0),
    *,
    force: bool = False,
) -> None:
    """Return nothing; write ``raw`` and ``instances`` to a new FISBe zarr v2 group at ``path``.

    raw: (C, Z, Y, X) or (Z, Y, X) array of any numeric dtype, stored as is.
    instances: neurons on the same (Z, Y, X) grid; the k-th smallest id becomes channel k with
        value k+1 (uint8, or uint16 beyond 255 neurons).
    force: replace an existing zarr at ``path``; without it a non-empty ``path`` is refused.
    """
    channels = _as_channels(np.asarray(raw), Path(path), RAW)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise VolumeFormatError(f"{path}: voxel size must be 3 positive numbers, got {voxel_size}")
    if channels.shape[1:] != instances.shape:
        raise VolumeFormatError(
            f"{path}: raw spatial shape {channels.shape[1:]} does not match "
            f"the instances' shape {instances.shape}"
        )
    claim_output(Path(path), force=force)
    attributes = {VOXEL_SIZE_ATTR: [float(size) for size in voxel_size]}
    group = zarr.open_group(Path(path), mode="w", zarr_format=2)
    stored_raw = group.create_array(
        RAW,
        shape=channels.shape,
        dtype=channels.dtype,
        chunks=_chunks(channels.shape),
        attributes={**attributes, "axes": ["c", "z", "y", "x"]},
    )
    stored_raw[:] = channels
    _write_instance_channels(group, instances, attributes)
    logger.info("wrote %s: raw %s, %d neurons", path, channels.shape, len(instances.ids()))


def _write_instance_channels(
    group: zarr.Group, instances: Instances, attributes: dict[str, Any]
) -> None:
    """Return nothing; write one (Z, Y, X) channel per instance to ``volumes/gt_instances``."""
    ids = instances.ids()
    dtype = np.uint8 if len(ids) <= np.iinfo(np.uint8).max else np.uint16
    shape = (len(ids), *instances.shape)
    stored = group.create_array(
        GT_INSTANCES,
        shape=shape,
        dtype=dtype,
        chunks=_chunks(shape),
        attributes={**attributes, "axes": ["n", "z", "y", "x"]},
    )
    for channel, instance_id in enumerate(ids):
        mask = instances.mask(int(instance_id))
        stored[channel] = np.where(mask, channel + 1, 0).astype(dtype)


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return chunks of one channel by at most CHUNK_ZYX voxels for a (C, Z, Y, X) shape."""
    return (1, *(min(size, chunk) for size, chunk in zip(shape[1:], CHUNK_ZYX, strict=True)))


def read_fisbe(path: Path) -> FisbeVolume:
    """Return the raw volume, neurons and voxel size stored in the FISBe group at ``path``.

    Raises VolumeFormatError (naming the file and dataset) when the path is not a zarr v2 group,
    a dataset is missing or has the wrong dimensionality, the labels are floating point, or raw
    and labels disagree on the spatial shape.
    """
    raw, labels, size = open_fisbe(path)
    logger.debug("read %s: raw %s, %d neurons", path, raw.shape, labels.array.shape[0])
    return FisbeVolume(raw.slab(0, raw.shape[1]), labels.slab(0, labels.shape[0]), size)


def open_fisbe(path: Path) -> tuple[RawSource, LabelSource, VoxelSize]:
    """Return lazy views of the raw volume and neurons in the FISBe group at ``path``, and its
    voxel size; nothing is read yet. Raises VolumeFormatError like :func:`read_fisbe`."""
    path = Path(path)
    group = _open_group(path)
    raw = raw_source(_array(group, RAW, path), f"{path}:{RAW}")
    labels = _array(group, GT_INSTANCES, path)
    _check_labels(labels, raw.shape[1:], path)
    stored = group[RAW].attrs.get(VOXEL_SIZE_ATTR)
    where = f"{path}: attribute '{VOXEL_SIZE_ATTR}' of '{RAW}'"
    return (
        raw,
        LabelSource(labels, stacked=True, where=f"{path}:{GT_INSTANCES}"),
        voxel_size(stored, where, default=FISBE_VOXEL_SIZE),
    )


def _open_group(path: Path) -> zarr.Group:
    """Return the zarr v2 group at ``path``, opened read-only."""
    try:
        return zarr.open_group(path, mode="r", zarr_format=2)
    except (FileNotFoundError, NotADirectoryError, zarr.errors.BaseZarrError) as error:
        raise VolumeFormatError(f"{path}: not a readable zarr v2 group ({error})") from error


def _array(group: zarr.Group, name: str, path: Path) -> zarr.Array:
    """Return the array ``name`` of the group, or raise VolumeFormatError if it is missing."""
    try:
        node = group[name]
    except KeyError as error:
        raise VolumeFormatError(f"{path}: dataset '{name}' is missing") from error
    if not isinstance(node, zarr.Array):
        raise VolumeFormatError(f"{path}: '{name}' is a group, expected an array")
    return node


def _as_channels(raw: npt.NDArray[Any], path: Path, name: str) -> npt.NDArray[Any]:
    """Return raw as a (C, Z, Y, X) array; a (Z, Y, X) array becomes one channel."""
    if raw.ndim == 3:
        return raw[np.newaxis]
    if raw.ndim != 4:
        raise VolumeFormatError(
            f"{path}: dataset '{name}' must be (C, Z, Y, X) or (Z, Y, X), got shape {raw.shape}"
        )
    return raw


def _check_labels(labels: zarr.Array, spatial_shape: tuple[int, ...], path: Path) -> None:
    """Return nothing; raise VolumeFormatError unless labels are integer (N, Z, Y, X) on the
    raw's (Z, Y, X) grid."""
    if len(labels.shape) != 4:
        raise VolumeFormatError(
            f"{path}: dataset '{GT_INSTANCES}' must be (N, Z, Y, X), got shape {labels.shape}"
        )
    if np.dtype(labels.dtype).kind not in "uib":
        raise VolumeFormatError(
            f"{path}: dataset '{GT_INSTANCES}' must hold integer labels, got {labels.dtype}"
        )
    if tuple(labels.shape[1:]) != tuple(spatial_shape):
        raise VolumeFormatError(
            f"{path}: dataset '{GT_INSTANCES}' spatial shape {labels.shape[1:]} does not match "
            f"'{RAW}' spatial shape {spatial_shape}"
        )
