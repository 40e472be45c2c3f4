"""Turn crop slices into the images a Label Studio task shows (pure array functions + PNG).

MCFO data has three colour channels, which map naturally to RGB. Contrast is set per crop
(one pair of percentiles per channel over the whole crop) so that every slice of a task shares
one contrast and a neuron does not change brightness from page to page.

What is burned into a page (it must stay the crop's size, pixel for pixel, since brush masks
are drawn on it): the slice's absolute z in the top-left corner (:func:`page_tag`, a 3x5 pixel
font) and the model's doubts as corner marks around unsure places (:func:`doubt_marks`),
white or grey, never a colour a neuron could have. The overview (:func:`overview_image`) is a
still image beside the pages: max-intensity projections of the crop from the top (XY) and the
side (XZ) with the label slices marked, and the side view of the doubts on a fixed scale with
its legend.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

LOW_PERCENTILE = 1.0
# Neurons are thin and sparse: a high percentile keeps the brightest voxels from saturating.
HIGH_PERCENTILE = 99.9
OVERLAY_CMAP = "gray"
# A 3x5 pixel font: enough for z numbers and scale labels.
GLYPHS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("##.", "..#", ".#.", "#..", "###"),
    "3": ("##.", "..#", ".#.", "..#", "##."),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "##.", "..#", "##."),
    "6": (".##", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "##."),
    "z": ("...", "###", ".#.", "#..", "###"),
    ".": ("...", "...", "...", "...", ".#."),
    "-": ("...", "...", "###", "...", "..."),
    " ": ("...", "...", "...", "...", "..."),
}
GLYPH_HEIGHT, GLYPH_WIDTH = 5, 3
WHITE, GREY, BLACK = (255, 255, 255), (150, 150, 150), (0, 0, 0)
# Doubt marks: the two levels (fractions of the scale's top) and the smallest region marked.
DOUBT_LEVELS = (0.2, 0.5)
MIN_DOUBT_PIXELS = 2
OVERVIEW_WIDTH = 256


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


def text_mask(text: str) -> npt.NDArray[np.bool_]:
    """Return the (5, 4 len - 1) bool pixels of ``text`` in the 3x5 font (digits, z . - space)."""
    unknown = sorted(set(text) - set(GLYPHS))
    if unknown:
        raise ValueError(f"no glyph for {unknown} in {text!r}")
    columns: list[npt.NDArray[np.bool_]] = []
    for number, char in enumerate(text):
        if number:
            columns.append(np.zeros((GLYPH_HEIGHT, 1), bool))
        columns.append(np.array([[c == "#" for c in row] for row in GLYPHS[char]], bool))
    if not columns:
        return np.zeros((GLYPH_HEIGHT, 0), bool)
    return np.concatenate(columns, axis=1)


def burn_text(
    rgb: npt.NDArray[np.uint8],
    text: str,
    top: int,
    left: int,
    color: tuple[int, int, int],
    background: tuple[int, int, int] | None = None,
) -> npt.NDArray[np.uint8]:
    """Return a copy of an (H, W, 3) uint8 image with ``text`` written at (top, left).

    ``background``: a box one pixel wider than the text on every side, drawn first (None:
    the text alone). Whatever falls outside the image is cut off.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    pixels = text_mask(text)
    if background is not None:
        box = np.zeros((pixels.shape[0] + 2, pixels.shape[1] + 2), bool)
        _paint_mask(out, box | True, top - 1, left - 1, background)
    _paint_mask(out, pixels, top, left, color)
    return out


def _paint_mask(
    out: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.bool_],
    top: int,
    left: int,
    color: tuple[int, int, int],
) -> None:
    height, width = out.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], height), min(left + mask.shape[1], width)
    if y0 >= y1 or x0 >= x1:
        return
    part = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    out[y0:y1, x0:x1][part] = color


def page_tag(rgb: npt.ArrayLike, z: int, labeled: bool) -> npt.NDArray[np.uint8]:
    """Return an (H, W, 3) page with its absolute ``z`` burned into the top-left corner.

    Digits only (a crop may be 32 pixels wide): black on white on a label page, grey on
    black on a context page, so the two kinds differ at a glance (and in a screenshot).
    """
    image = np.asarray(rgb, dtype=np.uint8)
    if labeled:
        return burn_text(image, str(z), 1, 1, BLACK, WHITE)
    return burn_text(image, str(z), 1, 1, GREY, BLACK)


def doubt_marks(
    rgb: npt.ArrayLike,
    doubt: npt.ArrayLike,
    vmax: float,
    levels: tuple[float, float] = DOUBT_LEVELS,
) -> npt.NDArray[np.uint8]:
    """Return an (H, W, 3) page with corner marks around the places where the model is unsure.

    ``doubt``: (H, W) uncertainty on the scale whose top is ``vmax`` (fixed per round, so marks
    compare across tasks). Each connected place at or above ``levels[1]`` of the scale gets
    white corners one pixel outside its bounding box; a place only above ``levels[0]``, grey
    ones. Corners, not outlines or a tint: they cover almost nothing of the data and cannot be
    taken for a neuron.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    values = np.nan_to_num(np.asarray(doubt, dtype=np.float64))
    if values.shape != out.shape[:2]:
        raise ValueError(f"doubt must be {out.shape[:2]}, got shape {values.shape}")
    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    low, high = (level * vmax for level in levels)
    strong = values >= high
    places, _ = ndimage.label(values >= low, structure=np.ones((3, 3), bool))
    for index, found in enumerate(ndimage.find_objects(places), start=1):
        if found is None:
            continue
        region = places[found] == index
        if region.sum() < MIN_DOUBT_PIXELS:
            continue
        color = WHITE if strong[found][region].any() else GREY
        _corners(out, found, color)
    return out


def _corners(out: npt.NDArray[np.uint8], box: tuple[slice, ...], color: tuple[int, ...]) -> None:
    """Draw four L-shaped corners (arms of 2 pixels) just outside a bounding box."""
    height, width = out.shape[:2]
    top, bottom = box[0].start - 1, box[0].stop
    left, right = box[1].start - 1, box[1].stop
    for y, dy in ((top, 1), (bottom, -1)):
        for x, dx in ((left, 1), (right, -1)):
            for py, px in ((y, x), (y + dy, x), (y, x + dx)):
                if 0 <= py < height and 0 <= px < width:
                    out[py, px] = color


def doubt_heat(doubt: npt.ArrayLike, vmax: float) -> npt.NDArray[np.uint8]:
    """Return an (H, W, 3) single-hue (black to white) image of an (H, W) doubt map, 0..vmax."""
    values = np.nan_to_num(np.asarray(doubt, dtype=np.float64))
    level = np.round(np.clip(values / vmax, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(level[..., None], 3, axis=2)


def legend_bar(width: int, vmax: float) -> npt.NDArray[np.uint8]:
    """Return an (11, width, 3) legend: a black-to-white ramp over "0" and the scale's top."""
    ramp = np.round(np.linspace(0.0, 255.0, width)).astype(np.uint8)
    bar: npt.NDArray[np.uint8] = np.zeros((11, width, 3), np.uint8)
    bar[:4] = ramp[None, :, None]
    top = f"{vmax:.2g}".lstrip("0") or "0"
    with_zero = burn_text(bar, "0", 5, 0, WHITE)
    return burn_text(with_zero, top, 5, width - 4 * len(top) + 1, WHITE)


def overview_image(
    raw: npt.ArrayLike,
    limits: npt.ArrayLike,
    label_z: Sequence[int],
    shown_z: Sequence[int],
    z_origin: int,
    doubt: npt.ArrayLike | None = None,
    vmax: float = 1.0,
) -> npt.NDArray[np.uint8]:
    """Return the overview of a crop: (H, W, 3) uint8, scaled up to about 256 pixels wide.

    ``raw``: the crop (C, Z, Y, X); ``limits``: its contrast (:func:`channel_limits`). From
    the top down: the XY max-intensity projection; the XZ projection (z downwards) with a
    margin where each label slice is ticked white with its absolute z (``z_origin`` + z) and
    each context page grey; with ``doubt`` (Z, Y, X), the XZ projection of the doubt on the
    fixed scale 0..``vmax`` and its legend.
    """
    data = np.asarray(raw, dtype=np.float64)
    bounds = np.asarray(limits, dtype=np.float64)
    top_view = render_rgb(data.max(axis=1), bounds)
    side_view = render_rgb(data.max(axis=2), bounds)
    margin = 1 + (GLYPH_WIDTH + 1) * len(str(z_origin + data.shape[1] - 1)) + 2
    panels = [
        _with_margin(top_view, margin),
        _side_panel(side_view, margin, label_z, shown_z, z_origin),
    ]
    if doubt is not None:
        heat = doubt_heat(np.asarray(doubt, dtype=np.float64).max(axis=1), vmax)
        panels.append(_with_margin(heat, margin))
        panels.append(_with_margin(legend_bar(heat.shape[1], vmax), margin))
    gap = np.full((2, panels[0].shape[1], 3), 40, np.uint8)
    stacked = np.concatenate([part for panel in panels for part in (panel, gap)][:-1])
    factor = max(1, OVERVIEW_WIDTH // stacked.shape[1])
    return np.repeat(np.repeat(stacked, factor, axis=0), factor, axis=1)


def _with_margin(image: npt.NDArray[np.uint8], margin: int) -> npt.NDArray[np.uint8]:
    pad = np.zeros((image.shape[0], margin, 3), np.uint8)
    return np.concatenate([pad, image], axis=1)


def _side_panel(
    side: npt.NDArray[np.uint8],
    margin: int,
    label_z: Sequence[int],
    shown_z: Sequence[int],
    z_origin: int,
) -> npt.NDArray[np.uint8]:
    """Return the XZ projection with its margin: ticks at shown and label z, labels' numbers."""
    depth = side.shape[0]
    # Rows tall enough for a number (6 pixels) wherever a label slice is named.
    panel = _with_margin(side, margin)
    for z in shown_z:
        if 0 <= z < depth:
            panel[z, margin - 2 : margin] = GREY
    for z in label_z:
        if 0 <= z < depth:
            panel[z, margin - 2 : margin] = WHITE
    named_until = -10
    for z in sorted(label_z):
        if 0 <= z < depth and z - named_until >= GLYPH_HEIGHT + 1:
            text = str(z_origin + z)
            top = min(max(z - GLYPH_HEIGHT // 2, 0), max(depth - GLYPH_HEIGHT, 0))
            panel = burn_text(panel, text, top, margin - 3 - 4 * len(text) + 1, WHITE)
            named_until = z
    return panel
