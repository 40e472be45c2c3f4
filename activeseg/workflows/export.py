"""Handing results on: labels (a prediction's consensus, a crop's labels, a volume's ground
truth) as an OME-Zarr label image under their source image, or as an ImageJ TIFF with its
calibration, so napari, Fiji and neuroglancer open them in place."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.data import ome
from activeseg.data.importers import ome_image
from activeseg.durable import partial_name, replace_durably
from activeseg.errors import InputError
from activeseg.workflows.evaluate import read_labels
from activeseg.workflows.predict import resolve_volume, source_voxel_size
from activeseg.workflows.project import Project

IMAGEJ_MAX_ID = int(np.iinfo(np.uint16).max)


def placed_labels(
    project: Project | None, spec: str, key: str | None = None
) -> tuple[npt.NDArray[np.uint32], ome.Placement]:
    """Return a label image (Z, Y, X) and where it lies: its stored voxel size and origin
    (an activeseg prediction, crop labels or volume carry them; other files: 1 µm, at 0)."""
    path = resolve_volume(project, spec)
    labels = read_labels(path, key).labels
    stored = _stored_transforms(path)
    if stored is None:
        return labels, ome.Placement(source_voxel_size(project, spec))
    scale, translation = stored
    origin = tuple(round(t / s) for t, s in zip(translation, scale, strict=True))
    return labels, ome.Placement(scale, origin)  # type: ignore[arg-type]


def _stored_transforms(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Return the spatial (scale, translation) of an OME group's first level, or None."""
    if path.suffix.lower() not in (".zarr", ""):
        return None
    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # zarr raises several types for "not zarr"
        return None
    if not isinstance(node, zarr.Group):
        return None
    multiscale = ome_image(node)
    if multiscale is None:
        return None
    transforms = {t["type"]: t[t["type"]] for t in
                  multiscale["datasets"][0].get("coordinateTransformations", [])}  # fmt: skip
    scale = tuple(float(s) for s in transforms.get("scale", [1.0] * 3)[-3:])
    translation = tuple(float(t) for t in transforms.get("translation", [0.0] * 3)[-3:])
    return scale, translation


def export_tiff(
    project: Project | None, spec: str, out: Path, key: str | None = None
) -> dict[str, Any]:
    """Write labels as an ImageJ TIFF (Z, Y, X; 16-bit, or 32-bit float beyond 65535 ids)
    with the voxel size in µm, as Fiji reads it; return a summary."""
    import tifffile

    labels, placement = placed_labels(project, spec, key)
    dtype = np.uint16 if int(labels.max(initial=0)) <= IMAGEJ_MAX_ID else np.float32
    z, y, x = placement.voxel_size
    partial = partial_name(out)
    tifffile.imwrite(
        partial,
        labels.astype(dtype),
        imagej=True,
        resolution=(1.0 / x, 1.0 / y),
        metadata={"axes": "ZYX", "spacing": z, "unit": "um"},
    )
    partial.replace(out)
    return {"out": str(out), "shape": list(labels.shape), "voxel_size": [z, y, x],
            "instances": int(len(np.unique(labels)) - 1)}  # fmt: skip


def export_into_image(
    project: Project | None, spec: str, image: str, name: str, key: str | None = None
) -> dict[str, Any]:
    """Add labels to an OME-Zarr image as ``labels/NAME`` (as many levels as the image, placed
    at their origin: a crop's labels land on their crop); return a summary.

    image: a registered volume's name or an OME-Zarr image group. An existing label image of
    that name is refused (nothing in an image is replaced).
    """
    labels, placement = placed_labels(project, spec, key)
    target = resolve_volume(project, image)
    root = zarr.open_group(str(target), mode="a")
    multiscale = ome_image(root)
    if multiscale is None:
        raise InputError(f"{target} is not an OME-Zarr image (no multiscales)")
    if "labels" in root and name in cast(zarr.Group, root["labels"]):
        raise InputError(f"{target} already holds a label image {name!r}; pick another --name")
    first = cast(zarr.Array, root[multiscale["datasets"][0]["path"]])
    full = _paste(labels, placement.origin, tuple(first.shape[-3:]), target)
    levels = [2**k for k in range(len(multiscale["datasets"]))]
    _write_label_image(root, target, name, full, ome.Placement(placement.voxel_size), levels)
    return {"image": str(target), "labels": f"labels/{name}", "levels": len(levels),
            "instances": int(len(np.unique(labels)) - 1)}  # fmt: skip


def _paste(
    labels: npt.NDArray[np.uint32], origin: tuple[int, ...], shape: tuple[int, ...], where: Path
) -> npt.NDArray[np.uint32]:
    end = [o + n for o, n in zip(origin, labels.shape, strict=True)]
    if any(o < 0 for o in origin) or any(e > n for e, n in zip(end, shape, strict=True)):
        raise InputError(
            f"labels of shape {labels.shape} at {origin} do not fit the image {where} {shape}"
        )
    if labels.shape == shape:
        return labels
    full = np.zeros(shape, np.uint32)
    full[tuple(slice(o, e) for o, e in zip(origin, end, strict=True))] = labels
    return full


def _write_label_image(
    root: zarr.Group,
    target: Path,
    name: str,
    labels: npt.NDArray[np.uint32],
    placement: ome.Placement,
    levels: list[int],
) -> None:
    folder = target / "labels"
    group = root.require_group("labels")
    partial = partial_name(folder / name)
    written = zarr.open_group(partial, mode="w-")
    chunks = tuple(min(n, c) for n, c in zip(labels.shape, (32, 128, 128), strict=True))
    written.create_array("0", data=labels, chunks=chunks, dimension_names=["z", "y", "x"])
    ome.write_levels(written, len(levels), labels=True, slab=chunks[0], names="zyx")
    ids = [int(i) for i in np.unique(labels) if i]
    written.attrs["ome"] = ome.label_attrs(name, placement, ids, levels=levels)
    try:
        replace_durably(partial, folder / name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    listed = cast(dict[str, Any], dict(group.attrs).get("ome", {})).get("labels", [])
    group.attrs["ome"] = {"version": ome.NGFF_VERSION, "labels": [*listed, name]}
