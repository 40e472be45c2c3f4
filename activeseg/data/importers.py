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
        return _read_container(path, _open_zarr(path), raw_key, labels_key)
    if fmt == "hdf5":
        return _read_container(path, _open_hdf5(path), raw_key, labels_key)
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
    path: Path, container: Any, raw_key: str | None, labels_key: str | None
) -> SourceVolume:
    ngff = ome_image(container)
    if ngff is not None and raw_key is None:
        return _read_ome(path, container, ngff, labels_key)
    raw_key = raw_key or "raw"
    raw = raw_source(_dataset(path, container, raw_key), f"{path}:{raw_key}")
    labels = None
    if labels_key:
        stored = _dataset(path, container, labels_key)
        labels = label_source(stored, raw.shape[1:], f"{path}:{labels_key}")
    scale = container.attrs.get("voxel_size") if hasattr(container, "attrs") else None
    return SourceVolume(raw, labels, voxel_size(scale, str(path)))


def ome_image(container: Any) -> dict[str, Any] | None:
    """Return the first multiscale of an OME-Zarr image group (NGFF 0.4 or 0.5), or None."""
    attrs = dict(getattr(container, "attrs", {}))
    found = (attrs.get("ome") or attrs).get("multiscales")
    return found[0] if isinstance(found, list) and found else None


def ome_label_dataset(container: Any) -> str | None:
    """Return the full-resolution dataset of an OME-Zarr label image group, or None."""
    attrs = dict(getattr(container, "attrs", {}))
    multiscale = ome_image(container)
    if multiscale is None or "image-label" not in (attrs.get("ome") or attrs):
        return None
    return str(multiscale["datasets"][0]["path"])


def _read_ome(
    path: Path, container: Any, multiscale: dict[str, Any], labels_key: str | None
) -> SourceVolume:
    """Return an OME-Zarr image: its full-resolution level, voxel size and label image
    (``labels_key`` names one under labels/, default the first listed)."""
    names = "".join(str(a["name"]).lower() for a in multiscale.get("axes", []))
    dataset = multiscale["datasets"][0]
    where = f"{path}:{dataset['path']}"
    array = _dataset(path, container, str(dataset["path"]))
    view, channel_axis = canonical_axes(array, names.upper(), where)
    raw = raw_source(view, where, channel_axis=channel_axis)
    scale = next(
        (
            t["scale"]
            for t in dataset.get("coordinateTransformations", [])
            if t.get("type") == "scale"
        ),
        None,
    )
    spatial = [float(s) for s, n in zip(scale or [], names, strict=False) if n in "zyx"]
    size = voxel_size(spatial if len(spatial) == 3 else None, where)
    label_group = _ome_label_group(path, container, labels_key)
    labels = None
    if label_group is not None:
        key = f"{label_group}/{ome_image(container[label_group])['datasets'][0]['path']}"  # type: ignore[index]
        labels = label_source(_dataset(path, container, key), raw.shape[1:], f"{path}:{key}")
    return SourceVolume(raw, labels, size)


def _ome_label_group(path: Path, container: Any, labels_key: str | None) -> str | None:
    if labels_key is not None and labels_key in container and ome_image(container[labels_key]):
        return labels_key
    listed = dict(container["labels"].attrs) if "labels" in container else {}
    names = list((listed.get("ome") or listed).get("labels", []))
    if labels_key is not None and labels_key not in names:
        raise VolumeFormatError(
            f"{path} has no label image {labels_key!r} (labels/: {', '.join(names) or 'none'})"
        )
    chosen = labels_key or (names[0] if names else None)
    return None if chosen is None else f"labels/{chosen}"


def _read_tiff(path: Path, labels_path: str | None) -> SourceVolume:
    array, axes, size = open_tiff(path)
    where = str(path)
    view, channel_axis = canonical_axes(array, axes, where)
    raw = raw_source(view, where, channel_axis=channel_axis)
    labels = None
    if labels_path:
        label_file = Path(labels_path)
        if not label_file.exists():
            raise VolumeFormatError(f"label file {label_file} does not exist")
        labels = label_source(read_tiff_labels(label_file), raw.shape[1:], str(label_file))
    return SourceVolume(raw, labels, size or (1.0, 1.0, 1.0))


def canonical_axes(array: Any, axes: str, where: str) -> tuple[Any, int | None]:
    """Return a view of ``array`` with axes ``axes`` (tifffile's letters: Z, Y, X, C or S for
    channels, Q or I for pages) as (C, Z, Y, X) or (Z, Y, X), and its channel axis (0 or None).

    Other axes (T, …) must have length 1. Nothing is read: numpy and memory maps give views.
    """
    axes = axes.upper().replace("S", "C").replace("Q", "Z").replace("I", "Z")
    if len(axes) != len(array.shape) or not {"Y", "X"} <= set(axes):
        raise VolumeFormatError(f"{where}: cannot read axes {axes!r} of shape {array.shape}")
    index: list[Any] = []
    kept = ""
    for name, size in zip(axes, array.shape, strict=True):
        if name in "ZYXC" and name not in kept:
            index.append(slice(None))
            kept += name
        elif size == 1:
            index.append(0)
        else:
            raise VolumeFormatError(
                f"{where}: axis {name} has {size} entries; activeseg reads one Z stack "
                f"(axes {axes}, shape {tuple(array.shape)})"
            )
    view = array[tuple(index)] if any(i == 0 for i in index) else array
    if "Z" not in kept:
        view, kept = view[np.newaxis], "Z" + kept
    order = [kept.index(a) for a in "CZYX" if a in kept]
    view = np.transpose(view, order) if order != list(range(len(order))) else view
    return view, (0 if "C" in kept else None)


def open_tiff(path: Path) -> tuple[Any, str, VoxelSize | None]:
    """Return a TIFF's image (memory-mapped where it is stored uncompressed), its axes as
    tifffile names them, and its voxel size in µm from ImageJ or OME-XML metadata (or None)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, size = series.axes, tiff_voxel_size(tif)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise VolumeFormatError(f"{path} is not a readable TIFF file: {exc}") from exc
    return load_tiff(path), axes, size


def read_tiff_labels(path: Path) -> Any:
    """Return a label TIFF as (Z, Y, X): a stack (napari's Labels layer, Fiji), or one image."""
    array, axes, _ = open_tiff(path)
    view, channel_axis = canonical_axes(array, axes, str(path))
    if channel_axis is not None:
        raise VolumeFormatError(f"{path}: labels must be one channel, got axes {axes}")
    return view


MICROMETRES = {
    **dict.fromkeys(("micron", "microns", "um", "µm", "\\u00b5m", "micrometer"), 1.0),
    **dict.fromkeys(("nm", "nanometer"), 1e-3),
    **dict.fromkeys(("mm", "millimeter"), 1e3),
}


def tiff_voxel_size(tif: Any) -> VoxelSize | None:
    """Return the (z, y, x) voxel size in µm stored by ImageJ or in OME-XML, or None."""
    import tifffile

    if tif.is_ome and tif.ome_metadata:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
        sizes = [_ome_size(pixels, a) for a in "ZYX"]
        return None if None in sizes else (sizes[0], sizes[1], sizes[2])  # type: ignore[return-value]
    meta = tif.imagej_metadata
    if not meta:
        return None
    factor = MICROMETRES.get(str(meta.get("unit", "")).lower())
    tags = tif.pages[0].tags
    if factor is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    x, y = (_per_pixel(tags[t].value) for t in ("XResolution", "YResolution"))
    z = float(meta.get("spacing", 1.0))
    return (z * factor, y * factor, x * factor)


def _per_pixel(resolution: tuple[int, int]) -> float:
    pixels, units = resolution
    return units / pixels if pixels else 1.0


def _ome_size(pixels: dict[str, Any], axis: str) -> float | None:
    size = pixels.get(f"PhysicalSize{axis}")
    if size is None:
        return 1.0 if axis == "Z" else None
    unit = str(pixels.get(f"PhysicalSize{axis}Unit", "µm")).lower()
    return float(size) * MICROMETRES.get(unit, 1.0)


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
