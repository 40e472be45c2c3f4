"""Tiling a volume into candidate crops, and telling crops with neurons from background."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

Origin = tuple[int, int, int]


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Return tile starts along one axis; the last tile is aligned to the end so all is covered."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def tile_boxes(
    shape: tuple[int, int, int], size: tuple[int, int, int], stride: tuple[int, int, int]
) -> Iterator[tuple[Origin, Origin]]:
    """Yield ``(origin, end)`` of crops tiling a (Z, Y, X) volume.

    Along an axis shorter than the crop size the crop spans the whole axis.
    """
    axes = [_starts(n, s, t) for n, s, t in zip(shape, size, stride, strict=True)]
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                origin = (z, y, x)
                end = tuple(min(o + s, n) for o, s, n in zip(origin, size, shape, strict=True))
                yield origin, end  # type: ignore[misc]


def bright_threshold(raw: npt.NDArray[Any], sample: int = 1_000_000, seed: int = 0) -> float:
    """Return the intensity above which a voxel counts as bright (likely neuron).

    raw: (C, Z, Y, X). Robust to noise: median + 6 MADs of the per-voxel channel maximum,
    estimated on a random sample of voxels.
    """
    peak = np.asarray(raw).max(axis=0).ravel()
    if peak.size > sample:
        peak = np.random.default_rng(seed).choice(peak, sample, replace=False)
    median = float(np.median(peak))
    mad = float(np.median(np.abs(peak - median))) or 1.0
    return median + 6.0 * 1.4826 * mad


def bright_fraction(raw_crop: npt.NDArray[Any], threshold: float) -> float:
    """Return the fraction of voxels of a (C, Z, Y, X) crop whose channel maximum is bright."""
    return float((np.asarray(raw_crop).max(axis=0) > threshold).mean())
