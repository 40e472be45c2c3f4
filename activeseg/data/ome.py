"""OME-Zarr (NGFF 0.5) metadata: what napari, Fiji and neuroglancer read to place, colour and
name an image and its labels, and the multiscale pyramid of a large volume.

Every array activeseg writes for people to look at is a dataset of an OME image or label
group, with its voxel size (``scale``) and its place in the source volume (``translation``,
both in micrometres), so a crop's labels or predictions overlay the raw they came from.
"""

from __future__ import annotations

import colorsys
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import zarr

NGFF_VERSION = "0.5"
UNIT = "micrometer"
# Channel colours: MCFO's three stains as red, green, blue; then more, white for one channel.
CHANNEL_COLORS = ("FF0000", "00FF00", "0000FF", "FF00FF", "00FFFF", "FFFF00", "FFFFFF", "FF8000")
# Label groups with more ids than this get no per-id colour table (viewers pick colours).
MAX_LABEL_COLORS = 4096


@dataclass(frozen=True)
class Placement:
    """Where an array lies in its volume: voxel size and origin, (z, y, x), in micrometres
    and voxels."""

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[int, int, int] = (0, 0, 0)

    def translation(self) -> list[float]:
        """Return the origin in micrometres."""
        return [float(o * s) for o, s in zip(self.origin, self.voxel_size, strict=True)]


def axes(names: str) -> list[dict[str, str]]:
    """Return NGFF axes for names like "czyx": c a channel axis, the rest space in µm."""
    return [
        {"name": n, "type": "channel"} if n == "c" else {"name": n, "type": "space", "unit": UNIT}
        for n in names
    ]


def multiscale(
    name: str, names: str, placement: Placement, paths: Sequence[str], factors: Sequence[int]
) -> dict[str, Any]:
    """Return one multiscale: a dataset per level, level k downsampled by ``factors[k]`` in
    every spatial axis, with its scale and translation (voxel centres stay aligned)."""
    lead = [1.0] * (len(names) - 3)
    datasets = []
    for path, factor in zip(paths, factors, strict=True):
        scale = [s * factor for s in placement.voxel_size]
        shift = [t + (factor - 1) * s / 2 for t, s in zip(placement.translation(),
                 placement.voxel_size, strict=True)]  # fmt: skip
        datasets.append(
            {
                "path": path,
                "coordinateTransformations": [
                    {"type": "scale", "scale": [*lead, *scale]},
                    {"type": "translation", "translation": [*([0.0] * len(lead)), *shift]},
                ],
            }
        )
    return {"name": name, "axes": axes(names), "datasets": datasets}


def image_attrs(
    name: str,
    names: str,
    placement: Placement,
    paths: Sequence[str] = ("0",),
    factors: Sequence[int] = (1,),
) -> dict[str, Any]:
    """Return the ``ome`` attributes of an image group."""
    return {
        "version": NGFF_VERSION,
        "multiscales": [multiscale(name, names, placement, paths, factors)],
    }


def omero(windows: Sequence[tuple[float, float, float, float]]) -> dict[str, Any]:
    """Return the ``omero`` channel metadata: one colour and display window per channel.

    windows: per channel (min, max, start, end): the data range and the contrast to show.
    """
    channels = []
    for index, (low, high, start, end) in enumerate(windows):
        color = "FFFFFF" if len(windows) == 1 else CHANNEL_COLORS[index % len(CHANNEL_COLORS)]
        channels.append(
            {
                "label": f"channel {index}",
                "color": color,
                "active": True,
                "window": {"min": low, "max": high, "start": start, "end": end},
            }
        )
    return {"channels": channels}


def label_colors(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Return an NGFF colour table: a distinct, bright RGBA colour per label id."""
    if len(ids) > MAX_LABEL_COLORS:
        return []
    table = []
    for label in ids:
        hue = (int(label) * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
        rgba = [round(red * 255), round(green * 255), round(blue * 255), 255]
        table.append({"label-value": int(label), "rgba": rgba})
    return table


def image_label(ids: Sequence[int], source: str | None = "../../") -> dict[str, Any]:
    """Return the ``image-label`` attributes of a label group (colours, version, source)."""
    attrs: dict[str, Any] = {"version": NGFF_VERSION}
    colors = label_colors(ids)
    if colors:
        attrs["colors"] = colors
    if source is not None:
        attrs["source"] = {"image": source}
    return attrs


def label_attrs(
    name: str,
    placement: Placement,
    ids: Sequence[int],
    *,
    path: str = "0",
    source: str | None = "../../",
    levels: Sequence[int] = (1,),
) -> dict[str, Any]:
    """Return the ``ome`` attributes of a (Z, Y, X) label group whose levels are at ``path``
    (one level) or "0", "1", … (several)."""
    paths = [path] if len(levels) == 1 else [str(k) for k in range(len(levels))]
    attrs = image_attrs(name, "zyx", placement, paths, levels)
    attrs["image-label"] = image_label(ids, source)
    return attrs


def name_dimensions(array: zarr.Array, names: Sequence[str]) -> None:
    """Give an existing zarr v3 array on a local disk its dimension names.

    NGFF 0.5 asks every dataset to name its axes; zarr has no call to add names to an array
    made without them, so its metadata document is rewritten (nothing else in it changes).
    """
    path = Path(str(array.store_path.store.root)) / array.path / "zarr.json"  # type: ignore[attr-defined]
    document = json.loads(path.read_text())
    document["dimension_names"] = list(names)
    path.write_text(json.dumps(document, indent=2))


def pyramid_factors(shape: Sequence[int], min_size: int) -> list[int]:
    """Return the downsampling factor of each level (1, 2, 4, …) of a (Z, Y, X) volume: levels
    are added while the largest of Y and X exceeds ``min_size``."""
    factors = [1]
    while max(shape[-2:]) // factors[-1] > min_size:
        factors.append(factors[-1] * 2)
    return factors


def downsample(block: npt.NDArray[Any], *, labels: bool) -> npt.NDArray[Any]:
    """Return a (…, Z, Y, X) block halved in each spatial axis: the mean of each 2×2×2 cell
    for an image, its first voxel for labels (ids must not blend). Odd edges repeat their
    last plane. Memory: one float32 accumulator of the output's size."""
    if labels:
        return block[..., ::2, ::2, ::2]
    shape = tuple((n + 1) // 2 for n in block.shape[-3:])
    total = np.zeros((*block.shape[:-3], *shape), np.float32)
    for offsets in itertools.product((0, 1), repeat=3):
        index = [np.minimum(np.arange(d, 2 * m, 2), n - 1)
                 for d, m, n in zip(offsets, shape, block.shape[-3:], strict=True)]  # fmt: skip
        total += block[(..., *np.ix_(*index))]
    total /= 8
    return (
        total.astype(block.dtype) if block.dtype.kind == "f" else np.rint(total).astype(block.dtype)
    )


def write_levels(
    group: zarr.Group, levels: int, *, labels: bool, slab: int, names: Sequence[str]
) -> None:
    """Write levels 1..levels-1 of ``group`` from level 0, each from the one above it, ``slab``
    output z-planes at a time, read ``slab`` input planes at a time (memory holds one input
    slab, never the volume)."""
    half = max(1, slab // 2)
    for level in range(1, levels):
        above = cast(zarr.Array, group[str(level - 1)])
        shape = (*above.shape[:-3], *((n + 1) // 2 for n in above.shape[-3:]))
        chunks = tuple(min(c, n) for c, n in zip(above.chunks, shape, strict=True))
        out = group.create_array(
            str(level), shape=shape, dtype=above.dtype, chunks=chunks, dimension_names=names
        )
        for z0 in range(0, shape[-3], slab):
            z1 = min(z0 + slab, shape[-3])
            pieces = [
                downsample(np.asarray(above[..., 2 * s0 : 2 * min(s0 + half, z1), :, :]),
                           labels=labels)
                for s0 in range(z0, z1, half)
            ]  # fmt: skip
            out[..., z0:z1, :, :] = np.concatenate(pieces, axis=-3)


def describe_prediction(
    path: Path,
    placement: Placement,
    instances: int,
    *,
    image: str,
    labels: str,
    source: str | None = None,
) -> None:
    """Make a prediction group an OME image: its ``image`` map (Z, Y, X; the uncertainty) is
    the image, and the label image at ``labels`` (``labels/NAME/0``; the consensus) its
    labels, both placed where the prediction lies in its volume."""
    root = zarr.open_group(path, mode="a")
    label_name = labels.split("/")[1]
    for key in (image, labels):
        name_dimensions(cast(zarr.Array, root[key]), "zyx")
    root.attrs["ome"] = image_attrs(image, "zyx", placement, [image])
    if source is not None:
        root.attrs["source"] = source  # the volume predicted: viewers show it underneath
    cast(zarr.Group, root["labels"]).attrs["ome"] = {
        "version": NGFF_VERSION,
        "labels": [label_name],
    }
    cast(zarr.Group, root[f"labels/{label_name}"]).attrs["ome"] = label_attrs(
        label_name, placement, range(1, instances + 1)
    )


def describe_crop_analysis(
    path: Path, placement: Placement, doubt: str, maps: Sequence[str]
) -> None:
    """Make a round's crop analysis group an OME image of its ``doubt`` map, placed at the
    crop in its volume, and name the dimensions of its (Z, Y, X) ``maps``, so viewers put it
    over the raw. (Its consensus stays where readers of analyses look for it.)"""
    root = zarr.open_group(path, mode="a")
    for key in {doubt, *maps}:
        name_dimensions(cast(zarr.Array, root[key]), "zyx")
    root.attrs["ome"] = image_attrs(doubt, "zyx", placement, [doubt])
