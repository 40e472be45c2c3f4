"""Instance label slices ⇄ Label Studio brush results (RLE, one region per instance per slice).

A result is one brush region on one shown slice (``item_index``, the slice's position in the
task's image list) with one label value ``n<id>``, so a neuron keeps its id across slices. The
RLE is Label Studio's own (``label_studio_sdk.converter.brush``): a flat RGBA image whose alpha
is the mask. Strokes drawn in the web page are anti-aliased (alpha 0-255), hence a threshold on
the way back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.core.instances import Instances
from activeseg.errors import AnnotationError
from activeseg.labelstudio.labeling import BRUSH_NAME, IMAGE_NAME, instance_id, instance_label

log = logging.getLogger(__name__)

BRUSH_TYPE = "brushlabels"
# Label Studio's RLE header: a 32-bit count of values, a 5-bit word size, four 4-bit run sizes.
RLE_HEADER_BITS = 32 + 5 + 4 * 4
# The most one value can cost: a 1-value run (flag, run-size index, 16-bit length, 8-bit word).
RLE_MAX_BITS_PER_VALUE = 1 + 2 + 16 + 8


def brush_result(
    mask: npt.NDArray[np.bool_], label: str, item_index: int, from_name: str, to_name: str
) -> dict[str, Any]:
    """Return one brush result dict for an (H, W) bool mask on shown slice ``item_index``."""
    from label_studio_sdk.converter.brush import mask2rle  # the SDK is slow to import

    height, width = mask.shape
    return {
        "id": f"s{item_index}-{label}",
        "from_name": from_name,
        "to_name": to_name,
        "type": BRUSH_TYPE,
        "item_index": item_index,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": mask2rle(mask.astype(np.uint8) * np.uint8(255)),
            "brushlabels": [label],
        },
    }


def instances_to_results(
    labels_slices: npt.ArrayLike,
    from_name: str = BRUSH_NAME,
    to_name: str = IMAGE_NAME,
    overlaps: npt.ArrayLike | None = None,
) -> list[dict[str, Any]]:
    """Return brush results, one per (slice, instance), for (N, H, W) integer instance ids.

    ``labels_slices``: the instance labels of the N shown slices (uint32, 0 = background), in
    the order of the task's image list; slice i becomes ``item_index`` i. ``overlaps``: rows
    ``(slice, y, x, id)`` of voxels that also belong to neuron ``id``; its region covers them
    too, so two regions share those voxels (what :func:`results_to_instances` reads back).
    """
    labels = np.asarray(labels_slices)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be (N, H, W) integers, got {labels.dtype} {labels.shape}")
    rows = np.zeros((0, 4), np.int64) if overlaps is None else np.asarray(overlaps, np.int64)
    results = []
    for index, plane in enumerate(labels):
        extra = rows[rows[:, 0] == index]
        for value in np.union1d(np.unique(plane[plane > 0]), extra[:, 3]):
            mask = plane == value
            also = extra[extra[:, 3] == value]
            mask[also[:, 1], also[:, 2]] = True
            label = instance_label(int(value))
            results.append(brush_result(mask, label, index, from_name, to_name))
    return results


def max_rle_length(n_values: int) -> int:
    """Return the most bytes a valid RLE of ``n_values`` uint8 values can take."""
    return (RLE_HEADER_BITS + RLE_MAX_BITS_PER_VALUE * n_values + 7) // 8


def is_byte(value: Any) -> bool:
    """Return whether a value is an integer from 0 to 255 (not a bool)."""
    return (
        isinstance(value, int | np.integer)
        and not isinstance(value, bool)
        and 0 <= int(value) <= 255
    )


def check_rle(rle: list[Any], height: int, width: int, where: str) -> None:
    """Raise AnnotationError unless an RLE is bytes whose header fits an (H, W) RGBA slice.

    Checked before decoding: a crafted header or list would otherwise make the decoder
    allocate and loop over as many values as it claims.
    """
    expected = height * width * 4
    if not RLE_HEADER_BITS // 8 < len(rle) <= max_rle_length(expected):
        raise AnnotationError(
            f"{where}: brush RLE has {len(rle)} bytes, a {height}x{width} slice needs "
            f"{RLE_HEADER_BITS // 8 + 1} to {max_rle_length(expected)}"
        )
    if not all(is_byte(b) for b in rle):
        raise AnnotationError(f"{where}: brush RLE must be a list of bytes (integers 0-255)")
    header = int.from_bytes(bytes(int(b) for b in rle[:5]), "big")
    count, word_size = header >> 8, ((header >> 3) & 0b11111) + 1
    if count != expected or word_size > 8:
        raise AnnotationError(
            f"{where}: brush RLE holds {count // 4} pixels of {word_size}-bit words, the slice "
            f"has {height}x{width} = {height * width} pixels of 8 bits"
        )


def decode_mask(
    value: Mapping[str, Any], height: int, width: int, threshold: int, where: str
) -> npt.NDArray[np.bool_]:
    """Return the (H, W) bool mask of a brush value (alpha >= ``threshold``)."""
    from label_studio_sdk.converter.brush import decode_rle  # the SDK is slow to import

    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise AnnotationError(f"{where}: brush region has no RLE (format {value.get('format')!r})")
    check_rle(value["rle"], height, width, where)
    try:
        flat = decode_rle(value["rle"])
    except (IndexError, ValueError, TypeError, OverflowError) as exc:
        raise AnnotationError(f"{where}: brush RLE cannot be decoded ({exc!r})") from exc
    if flat.size != height * width * 4:
        raise AnnotationError(
            f"{where}: brush RLE holds {flat.size // 4} pixels, the slice has "
            f"{height}x{width} = {height * width}"
        )
    return np.asarray(flat.reshape(height, width, 4)[:, :, 3] >= threshold)


def region_label(value: Mapping[str, Any], where: str) -> str:
    """Return the single brush label value of a region; AnnotationError if none or several."""
    labels = value.get("brushlabels")
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise AnnotationError(
            f"{where}: a brush region needs exactly one label, got {labels!r:.60}"
        )
    return labels[0]


def region_slice(result: Mapping[str, Any], n_slices: int, where: str) -> int:
    """Return a result's ``item_index``; AnnotationError if absent or not a pushed slice."""
    index = result.get("item_index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n_slices:
        raise AnnotationError(
            f"{where}: region on slice item_index={index!r}, but only {n_slices} slices "
            f"(0..{n_slices - 1}) were pushed"
        )
    return index


def check_size(result: Mapping[str, Any], height: int, width: int, where: str) -> None:
    """Raise AnnotationError if a result states an image size other than (height, width)."""
    stated = (result.get("original_height", height), result.get("original_width", width))
    if stated != (height, width):
        raise AnnotationError(
            f"{where}: region drawn on a {stated[0]}x{stated[1]} image, "
            f"the pushed slices are {height}x{width}"
        )


def results_to_instances(
    results: Sequence[Mapping[str, Any]],
    n_slices: int,
    height: int,
    width: int,
    threshold: int = 128,
    *,
    from_name: str = BRUSH_NAME,
    task: int | str | None = None,
) -> tuple[Instances, npt.NDArray[np.bool_]]:
    """Return (instances on the (N, H, W) shown slices, has_regions (N,) bool) decoded from
    brush results.

    Each region of ``from_name`` becomes instance k on its slice (label value ``n<k>``); other
    results (the status choice) are ignored. A pixel painted for two neurons belongs to both:
    the label image holds the smaller id, the overlap rows ``(slice, y, x, id)`` the others.
    ``has_regions`` marks the slices that carry at least one region; a submitted annotation
    vouches for every shown slice (an empty slice is background), which the caller decides.
    ``task`` only names the task in errors. Raises AnnotationError on an unknown label value,
    a region on a slice that was not pushed, undecodable RLE or a wrong image size.
    """
    labels = np.zeros((n_slices, height, width), dtype=np.uint32)
    has_regions = np.zeros(n_slices, dtype=bool)
    overlaps: list[npt.NDArray[np.int64]] = []
    for number, result in enumerate(results):
        if not isinstance(result, Mapping):
            raise AnnotationError(f"task {task}, result {number}: not an object: {result!r:.60}")
        if result.get("from_name") != from_name:
            continue
        where = f"task {task}, result {result.get('id', number)!r:.60}"
        if result.get("type") != BRUSH_TYPE:
            raise AnnotationError(f"{where}: expected a brush region, got {result.get('type')!r}")
        value = result.get("value")
        if not isinstance(value, Mapping):
            raise AnnotationError(f"{where}: the region's value is not an object: {value!r:.60}")
        ident = instance_id(region_label(value, where), where)
        index = region_slice(result, n_slices, where)
        check_size(result, height, width, where)
        mask = decode_mask(value, height, width, threshold, where)
        overlaps.append(_paint(labels[index], mask, ident, index))
        has_regions[index] = True
    rows = np.concatenate(overlaps) if overlaps else np.zeros((0, 4), np.int64)
    return Instances(labels, _unique_rows(rows)), has_regions


def _paint(
    plane: npt.NDArray[np.uint32], mask: npt.NDArray[np.bool_], ident: int, index: int
) -> npt.NDArray[np.int64]:
    """Paint ``ident`` into ``plane`` where ``mask``; return the overlap rows it makes (the
    smaller id stays in the plane, the larger becomes a row)."""
    shared = mask & (plane > 0) & (plane != ident)
    ys, xs = np.nonzero(shared)
    other = plane[ys, xs].astype(np.int64)
    rows = np.column_stack([np.full(len(ys), index), ys, xs, np.maximum(other, ident)])
    plane[mask & (plane == 0)] = ident
    plane[ys, xs] = np.minimum(other, ident).astype(np.uint32)
    return rows.astype(np.int64).reshape(-1, 4)


def _unique_rows(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.unique(rows, axis=0) if len(rows) else rows
