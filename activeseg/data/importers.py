"""Reading images and labels from FISBe zarr, plain zarr, TIFF and HDF5 into one shape.

Every reader returns a :class:`SourceVolume` with raw data as (C, Z, Y, X) and the labels (if
any) as :class:`Instances`, or raises :class:`VolumeFormatError` naming the file and dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.choices import Format
from activeseg.data.fisbe import open_fisbe
from activeseg.data.sources import (
    LabelSource,
    RawSource,
    VoxelSize,
    label_source,
    raw_source,
    voxel_size,
)
from activeseg.errors import VolumeFormatError

FORMATS = tuple(f.value for f in Format)


@dataclass(frozen=True)
class SourceVolume:
    """An image to import, not yet read: raw (C, Z, Y, X), optional labels, voxel size."""

    raw: RawSource
    labels: LabelSource | None
    voxel_size: VoxelSize


def read_source(
    path: Path,
    fmt: str,
    *,
    raw_key: str | None = None,
    labels_key: str | None = None,
) -> SourceVolume:
    """Return the volume stored at ``path`` in format ``fmt``, opened lazily.

    For zarr and HDF5, ``raw_key``/``labels_key`` name datasets inside the file; for TIFF,
    ``labels_key`` is the path of a label TIFF beside the raw one.
    """
    if not path.exists():
        raise VolumeFormatError(f"{path} does not exist")
    for key in (raw_key, labels_key):
        if key and fmt != "tiff" and (key.startswith("/") or ".." in Path(key).parts):
            raise VolumeFormatError(f"dataset key {key!r} points outside {path}")
    if fmt == "fisbe":
        return SourceVolume(*open_fisbe(path))
    if fmt == "zarr":
        return _read_container(path, _open_zarr(path), raw_key or "raw", labels_key)
    if fmt == "hdf5":
        return _read_container(path, _open_hdf5(path), raw_key or "raw", labels_key)
    if fmt == "tiff":
        return _read_tiff(path, labels_key)
    raise VolumeFormatError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _open_zarr(path: Path) -> Any:
    import zarr

    try:
        return zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a zarr group"
        raise VolumeFormatError(f"{path} is not a readable zarr group: {exc}") from exc


def _open_hdf5(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise VolumeFormatError(f"{path} is not a readable HDF5 file: {exc}") from exc


def _dataset(path: Path, container: Any, key: str) -> Any:
    try:
        node = container[key]
    except KeyError:
        raise VolumeFormatError(f"{path} has no dataset {key!r}") from None
    if not hasattr(node, "shape"):
        raise VolumeFormatError(f"{path}:{key} is a group, not a dataset")
    return node


def _read_container(
    path: Path, container: Any, raw_key: str, labels_key: str | None
) -> SourceVolume:
    raw = raw_source(_dataset(path, container, raw_key), f"{path}:{raw_key}")
    labels = None
    if labels_key:
        stored = _dataset(path, container, labels_key)
        labels = label_source(stored, raw.shape[1:], f"{path}:{labels_key}")
    scale = container.attrs.get("voxel_size") if hasattr(container, "attrs") else None
    return SourceVolume(raw, labels, voxel_size(scale, str(path)))


def _read_tiff(path: Path, labels_path: str | None) -> SourceVolume:
    raw = raw_source(load_tiff(path), str(path))
    labels = None
    if labels_path:
        label_file = Path(labels_path)
        if not label_file.exists():
            raise VolumeFormatError(f"label file {label_file} does not exist")
        labels = label_source(load_tiff(label_file), raw.shape[1:], str(label_file))
    return SourceVolume(raw, labels, (1.0, 1.0, 1.0))


def load_tiff(path: Path) -> Any:
    """Return a TIFF's image: memory-mapped where it is stored uncompressed, else read."""
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except (ValueError, OSError, tifffile.TiffFileError):
        pass
    try:
        return np.asarray(tifffile.imread(path))
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise VolumeFormatError(f"{path} is not a readable TIFF file: {exc}") from exc
