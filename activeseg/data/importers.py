"""Reading images and labels from FISBe zarr, plain zarr, TIFF and HDF5 into one shape.

Every reader returns a :class:`SourceVolume` with raw data as (C, Z, Y, X) and the labels (if
any) as :class:`Instances`, or raises :class:`VolumeFormatError` naming the file and dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from activeseg.core.instances import Instances
from activeseg.data.fisbe import read_fisbe
from activeseg.errors import VolumeFormatError

Format = Literal["fisbe", "zarr", "tiff", "hdf5"]
FORMATS: tuple[str, ...] = ("fisbe", "zarr", "tiff", "hdf5")
MAX_CHANNELS = 8


@dataclass(frozen=True)
class SourceVolume:
    """An image to import: raw (C, Z, Y, X) array-like, optional instances, voxel size."""

    raw: Any
    instances: Instances | None
    voxel_size: tuple[float, float, float]


def read_source(
    path: Path,
    fmt: str,
    *,
    raw_key: str | None = None,
    labels_key: str | None = None,
) -> SourceVolume:
    """Return the volume stored at ``path`` in format ``fmt``.

    For zarr and HDF5, ``raw_key``/``labels_key`` name datasets inside the file; for TIFF,
    ``labels_key`` is the path of a label TIFF beside the raw one.
    """
    if not path.exists():
        raise VolumeFormatError(f"{path} does not exist")
    for key in (raw_key, labels_key):
        if key and fmt != "tiff" and (key.startswith("/") or ".." in Path(key).parts):
            raise VolumeFormatError(f"dataset key {key!r} points outside {path}")
    if fmt == "fisbe":
        volume = read_fisbe(path)
        return SourceVolume(volume.raw, volume.instances, volume.voxel_size)
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
    raw = as_czyx(np.asarray(_dataset(path, container, raw_key)[...]), f"{path}:{raw_key}")
    instances = None
    if labels_key:
        data = np.asarray(_dataset(path, container, labels_key)[...])
        instances = as_instances(data, raw.shape[1:], f"{path}:{labels_key}")
    scale = container.attrs.get("voxel_size") if hasattr(container, "attrs") else None
    return SourceVolume(raw, instances, _voxel_size(scale))


def _read_tiff(path: Path, labels_path: str | None) -> SourceVolume:
    import tifffile

    def load(p: Path) -> npt.NDArray[Any]:
        try:
            return np.asarray(tifffile.imread(p))
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise VolumeFormatError(f"{p} is not a readable TIFF file: {exc}") from exc

    raw = as_czyx(load(path), str(path))
    instances = None
    if labels_path:
        label_file = Path(labels_path)
        if not label_file.exists():
            raise VolumeFormatError(f"label file {label_file} does not exist")
        instances = as_instances(load(label_file), raw.shape[1:], str(label_file))
    return SourceVolume(raw, instances, (1.0, 1.0, 1.0))


def _voxel_size(value: Any) -> tuple[float, float, float]:
    if value is None:
        return (1.0, 1.0, 1.0)
    z, y, x = (float(v) for v in value)
    return (z, y, x)


def as_czyx(raw: npt.NDArray[Any], where: str) -> npt.NDArray[Any]:
    """Return raw data as (C, Z, Y, X): 3-D is one channel; channels first or last in 4-D."""
    if raw.dtype.kind not in "uif":
        raise VolumeFormatError(f"{where}: raw data must be numeric, got {raw.dtype}")
    if raw.ndim == 3:
        return raw[None]
    if raw.ndim == 4 and raw.shape[0] <= MAX_CHANNELS:
        return raw
    if raw.ndim == 4 and raw.shape[-1] <= MAX_CHANNELS:
        return np.moveaxis(raw, -1, 0)
    raise VolumeFormatError(
        f"{where}: raw data must be (Z, Y, X) or (C, Z, Y, X) with at most {MAX_CHANNELS} "
        f"channels, got shape {raw.shape}"
    )


def as_instances(data: npt.NDArray[Any], spatial: tuple[int, ...], where: str) -> Instances:
    """Return labels as instances: a (Z, Y, X) label image or a (N, Z, Y, X) mask stack."""
    if data.dtype.kind not in "uib":
        raise VolumeFormatError(f"{where}: labels must be integers, got {data.dtype}")
    if data.ndim not in (3, 4) or tuple(data.shape[-3:]) != tuple(spatial):
        raise VolumeFormatError(
            f"{where}: labels of shape {data.shape} do not match the raw data's spatial "
            f"shape {tuple(spatial)}"
        )
    if data.ndim == 3:
        return Instances.from_labels(data)
    return Instances.from_stack(data > 0)
