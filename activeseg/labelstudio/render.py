"""Turn crop slices into the images a Label Studio task shows (pure array functions + PNG).

MCFO data has three colour channels, which map naturally to RGB. Contrast is set per crop
(one pair of percentiles per channel over the whole crop) so that every slice of a task shares
one contrast and a neuron does not change brightness from page to page.
"""

from __future__ import annotations

import base64
import io

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from PIL import Image

LOW_PERCENTILE = 1.0
# Neurons are thin and sparse: a high percentile keeps the brightest voxels from saturating.
HIGH_PERCENTILE = 99.9
OVERLAY_CMAP = "magma"


def channel_limits(
    raw: npt.ArrayLike, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> npt.NDArray[np.float64]:
    """Return per-channel (low, high) intensity percentiles, shape (C, 2) float64.

    ``raw``: (C, ...) any numeric dtype, e.g. a whole crop (C, Z, Y, X); percentiles are taken
    over everything but the channel axis.
    """
    data = np.asarray(raw, dtype=np.float64)
    if data.ndim < 2:
        raise ValueError(f"raw must be (C, ...) with at least 2 axes, got shape {data.shape}")
    flat = data.reshape(data.shape[0], -1)
    return np.stack([np.percentile(flat, low, axis=1), np.percentile(flat, high, axis=1)], axis=1)


def stretch(raw: npt.NDArray[np.float64], limits: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """Return (C, H, W) uint8: each channel mapped linearly from its (low, high) to 0..255."""
    low = limits[:, 0, None, None]
    span = np.maximum(limits[:, 1, None, None] - low, np.finfo(np.float64).tiny)
    scaled = np.clip((raw - low) / span, 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def render_rgb(raw: npt.ArrayLike, limits: npt.ArrayLike | None = None) -> npt.NDArray[np.uint8]:
    """Return an (H, W, 3) uint8 RGB image of one slice.

    ``raw``: (C, H, W) numeric, C in 1..3: 3 channels → R, G, B; 1 → gray; 2 → R, G (B = 0).
    ``limits``: (C, 2) per-channel (low, high) from :func:`channel_limits` over the whole crop,
    so all slices of a crop share one contrast; None computes them from this slice alone.
    """
    data = np.asarray(raw, dtype=np.float64)
    if data.ndim != 3 or not 1 <= data.shape[0] <= 3:
        raise ValueError(f"raw must be (C, H, W) with 1 to 3 channels, got shape {data.shape}")
    bounds = channel_limits(data) if limits is None else np.asarray(limits, dtype=np.float64)
    if bounds.shape != (data.shape[0], 2):
        raise ValueError(f"limits must be ({data.shape[0]}, 2), got shape {bounds.shape}")
    channels = stretch(data, bounds)
    if channels.shape[0] == 1:
        channels = np.repeat(channels, 3, axis=0)
    elif channels.shape[0] == 2:
        channels = np.concatenate([channels, np.zeros_like(channels[:1])])
    return np.ascontiguousarray(channels.transpose(1, 2, 0))


def overlay_rgba(
    uncertainty: npt.ArrayLike, vmax: float, cmap: str = OVERLAY_CMAP, max_alpha: float = 0.85
) -> npt.NDArray[np.uint8]:
    """Return an (H, W, 4) uint8 RGBA heat map of an (H, W) float uncertainty slice.

    Colour and opacity both grow with the uncertainty, from transparent at 0 to
    ``max_alpha`` at ``vmax`` and above (use one ``vmax`` per crop, or per round, so that
    colours compare across slices).
    """
    values = np.asarray(uncertainty, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"uncertainty must be (H, W), got shape {values.shape}")
    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    level = np.clip(np.nan_to_num(values) / vmax, 0.0, 1.0)
    rgba = mpl.colormaps[cmap](level)
    rgba[..., 3] = level * max_alpha
    return np.round(rgba * 255.0).astype(np.uint8)


def composite(rgb: npt.ArrayLike, rgba: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Return (H, W, 3) uint8: the (H, W, 4) uint8 overlay alpha-blended over an (H, W, 3) image."""
    base = np.asarray(rgb, dtype=np.float64)
    over = np.asarray(rgba, dtype=np.float64)
    if base.shape[:2] != over.shape[:2] or base.shape[-1] != 3 or over.shape[-1] != 4:
        raise ValueError(f"need (H, W, 3) and (H, W, 4), got {base.shape} and {over.shape}")
    alpha = over[..., 3:] / 255.0
    return np.round(base * (1.0 - alpha) + over[..., :3] * alpha).astype(np.uint8)


def png_bytes(image: npt.ArrayLike) -> bytes:
    """Return the PNG encoding of an (H, W), (H, W, 3) or (H, W, 4) uint8 image."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"need a uint8 (H, W[, 3|4]) image, got {pixels.dtype} {pixels.shape}")
    if pixels.ndim == 3 and pixels.shape[2] not in (3, 4):
        raise ValueError(f"need 3 or 4 colour channels, got shape {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """Return a ``data:image/png;base64,...`` URI of PNG bytes, usable as a task image URL.

    The alternative to uploading: one request for all tasks instead of one server-side
    database commit per file, at the price of the images living in the task data (a bigger
    database, and every task listing carries them).
    """
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
