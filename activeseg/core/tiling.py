"""Tiled sampling inference: S predictions per voxel, in memory or streamed to zarr.

A volume is cut into a grid of *core* boxes. Each tile is its core plus a margin of context on
every side (zero-filled beyond the volume, i.e. at the normalized background level); only the
core of a tile's prediction is kept. With the margin at least the U-Net's receptive-field
radius, tile origins aligned to its pooling grid, and normalization statistics fixed for the
whole volume (``CalibratedGroupNorm``), every kept voxel sees exactly what it would see in one
pass over the whole volume: the stitched result has no seams. The statistics are the volume's own
(``calibrate``): of the whole volume when it fits one calibration box, else of a few boxes
spread over it, independent of the tiling.

Zarr output (a v3 group) has one of two layouts, recorded in its ``layout`` attribute:

``samples`` (when the per-sample arrays stay under ``sample_budget_bytes``)::

    foreground      (S, Z, Y, X) float16 foreground probability of each sample
    embedding       (S, E, Z, Y, X) float16
    aleatoric_var   (S, Z, Y, X) float16, only for aleatoric models
    embedding_scale (S, Z, Y, X) float16, only for aleatoric models

``moments`` (otherwise: per-voxel statistics over the S samples)::

    foreground_mean (Z, Y, X) float32       foreground_var (Z, Y, X) float32
    embedding_mean  (E, Z, Y, X) float16    embedding_var  (Z, Y, X) float32, summed over E
                    (K, E, Z, Y, X) for K embedding spaces (an ensemble's members): each
                    member's mean, since means across unrelated spaces cannot be clustered
    aleatoric_var   (Z, Y, X) float32, the mean over samples, only for aleatoric models
    embedding_scale (Z, Y, X) float32, the mean over samples, only for aleatoric models

Both layouts also hold ``mutual_information`` (Z, Y, X) float32, the voxel BALD uncertainty of
the foreground over the S samples (:func:`activeseg.core.uncertainty.mutual_information`),
computed tile by tile.

Chunks are the core boxes, so every tile writes whole chunks and memory does not grow with the
volume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import zarr

from activeseg.config import Triple
from activeseg.core.models.checkpoint import TrainedModel
from activeseg.core.models.unet import calibrating
from activeseg.core.uncertainty import mutual_information
from activeseg.errors import InputError

logger = logging.getLogger(__name__)

# Default core of a tile (rounded up to the pooling divisor). With the demo U-Net's margin
# (14, 28, 28) a tile is (60, 184, 184) voxels, and predict's peak memory stays within its
# budget (see BENCHMARKS.md, the summary table's peak RSS of predict).
DEFAULT_CORE: Triple = (32, 128, 128)
# A tile's voxels times the U-Net's full-resolution width stays under this (the default core
# shrinks): activations take ~30 bytes per such feature voxel, so the forward pass stays near
# 3 GiB. The demo U-Net's tile (32.5 M) fits; the flylight one's margin of 64 voxels would make
# (160, 256, 256) x 16 = 168 M, so its core becomes (32, 64, 64).
TILE_FEATURE_BUDGET = 96 * 2**20
# Above this many bytes of per-sample output, predict_to_zarr stores moments instead.
SAMPLE_BUDGET_BYTES = 8 * 2**30
# Normalization statistics come from at most this many boxes of at most this size, spread over
# the volume; together about one default tile, so calibrating costs memory like one tile.
CALIBRATION_BOX: Triple = (32, 128, 128)
CALIBRATION_BOXES = 4

# The voxel uncertainty map every zarr prediction holds.
UNCERTAINTY = "mutual_information"

Box = tuple[slice, slice, slice]
Layout = Literal["auto", "samples", "moments"]


@dataclass(frozen=True)
class Prediction:
    """Sampled predictions of a volume (or of one tile's core).

    foreground: (S, Z, Y, X) float32 probability. embedding: (S, E, Z, Y, X) float32.
    aleatoric_var: (S, Z, Y, X) float32 variance of the foreground logit, or None.
    embedding_scale: (S, Z, Y, X) float32 aleatoric scale (>= 1) of the embedding, or None.
    """

    foreground: npt.NDArray[np.float32]
    embedding: npt.NDArray[np.float32]
    aleatoric_var: npt.NDArray[np.float32] | None
    embedding_scale: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class Tiling:
    """How a volume is cut: cores on a grid from the origin, each read with a margin."""

    core: Triple
    margin: Triple

    def boxes(self, shape: Triple) -> list[Box]:
        """Return the core boxes covering a (Z, Y, X) volume; edge boxes are clipped."""
        starts = [range(0, n, c) for n, c in zip(shape, self.core, strict=True)]
        return [_box(start, self.core, shape) for start in product(*starts)]


def _box(start: tuple[int, ...], size: Triple, shape: Triple) -> Box:
    """Return the box of size at start, clipped to shape."""
    z, y, x = (slice(s, min(s + n, m)) for s, n, m in zip(start, size, shape, strict=True))
    return z, y, x


def plan_tiling(
    trained: TrainedModel, shape: Triple, core: Triple | None = None, margin: Triple | None = None
) -> Tiling:
    """Return the tiling of a (Z, Y, X) volume: core and margin rounded up to the pool divisor.

    core defaults to DEFAULT_CORE (never larger than the volume needs), shrunk until a tile
    fits TILE_FEATURE_BUDGET; margin defaults to the model's receptive-field radius, which
    makes tiled and single-pass predictions equal.
    """
    divisor = trained.model.divisor()
    context = _round_up(margin or trained.model.context(), divisor)
    if core is not None:
        return Tiling(_round_up(core, divisor), context)
    wanted = _round_up(tuple(min(c, n) for c, n in zip(DEFAULT_CORE, shape, strict=True)), divisor)
    return Tiling(_fit_budget(wanted, context, divisor, trained.config.model.widths[0]), context)


def crop_tiling(trained: TrainedModel, shape: Triple) -> Tiling:
    """Return the tiling of a crop predicted on its own: one tile of the crop, no margin.

    The network then sees the crop as training sees a patch (its convolutions pad the
    borders), at a fraction of the work of a margin of the receptive field around it, which
    holds only zeros for a crop read alone. A crop over TILE_FEATURE_BUDGET is tiled with
    margins as a volume is (:func:`plan_tiling`), so its tiles still meet without seams.
    """
    core = _round_up(shape, trained.model.divisor())
    if trained.config.model.widths[0] * int(np.prod(core)) <= TILE_FEATURE_BUDGET:
        return Tiling(core, (0, 0, 0))
    return plan_tiling(trained, shape)


def _fit_budget(core: Triple, margin: Triple, divisor: Triple, width: int) -> Triple:
    """Return core, its largest axis halved (to a multiple of divisor) until a tile of it with
    margin times width (the U-Net's full-resolution channels) fits TILE_FEATURE_BUDGET."""
    sizes = list(core)

    def tile_features() -> int:
        return width * int(np.prod([c + 2 * m for c, m in zip(sizes, margin, strict=True)]))

    while tile_features() > TILE_FEATURE_BUDGET:
        axis = int(np.argmax([c / d for c, d in zip(sizes, divisor, strict=True)]))
        if sizes[axis] <= divisor[axis]:
            break
        sizes[axis] = max(divisor[axis], -(-sizes[axis] // 2 // divisor[axis]) * divisor[axis])
    return sizes[0], sizes[1], sizes[2]


def predict_array(
    trained: TrainedModel,
    raw: npt.ArrayLike,
    *,
    core: Triple | None = None,
    margin: Triple | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> Prediction:
    """Return the sampled prediction of raw (C, Z, Y, X), any numeric dtype, held in memory.

    threads: torch's intra-op threads (None: the checkpoint's ``train.threads``).
    """
    array = np.asarray(raw)
    shape = _spatial_shape(array, trained)
    tiling = plan_tiling(trained, shape, core, margin)
    parts: dict[str, npt.NDArray[np.float32]] = {}
    for box, tile in iterate_tiles(trained, array, tiling, seed, threads):
        for name, value in _named(tile).items():
            if name not in parts:
                parts[name] = np.zeros((*value.shape[:-3], *shape), np.float32)
            parts[name][(..., *box)] = value
    return Prediction(
        parts["foreground"],
        parts["embedding"],
        parts.get("aleatoric_var"),
        parts.get("embedding_scale"),
    )


def predict_to_zarr(
    trained: TrainedModel,
    raw: Any,
    out: Path,
    *,
    layout: Layout = "auto",
    core: Triple | None = None,
    margin: Triple | None = None,
    seed: int = 0,
    sample_budget_bytes: int = SAMPLE_BUDGET_BYTES,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> str:
    """Write the prediction of raw (C, Z, Y, X) to a zarr group at out; return its layout.

    raw is anything with ``shape`` and numpy slicing (numpy, zarr, h5py). Tiles are read,
    predicted and written one at a time. layout "auto" picks "samples" when S x (E + 1) x
    voxels in float16 fit sample_budget_bytes, else "moments" (see the module docstring).
    ``progress(done, total)`` is called after each tile; threads as in :func:`predict_array`.
    """
    chosen, tiling = prepare_prediction(
        trained,
        raw,
        out,
        layout=layout,
        core=core,
        margin=margin,
        seed=seed,
        sample_budget_bytes=sample_budget_bytes,
    )
    arrays = prediction_arrays(out)
    total = len(tiling.boxes(_spatial_shape(raw, trained)))
    for done, (box, tile) in enumerate(iterate_tiles(trained, raw, tiling, seed, threads), start=1):
        write_tile(arrays, box, tile, chosen)
        if progress is not None:
            progress(done, total)
    logger.info("predicted %s (%s) to %s", tuple(raw.shape), chosen, out)
    return chosen


def prepare_prediction(
    trained: TrainedModel,
    raw: Any,
    out: Path,
    *,
    layout: Layout = "auto",
    core: Triple | None = None,
    margin: Triple | None = None,
    seed: int = 0,
    sample_budget_bytes: int = SAMPLE_BUDGET_BYTES,
) -> tuple[str, Tiling]:
    """Return the layout and tiling of raw's prediction, after creating its empty zarr group
    at out (arguments as :func:`predict_to_zarr`); tiles are then written by
    :func:`write_tile`, in any order and from any process (each tile writes whole chunks)."""
    shape = _spatial_shape(raw, trained)
    tiling = plan_tiling(trained, shape, core, margin)
    chosen = _choose_layout(trained, shape, layout, sample_budget_bytes)
    group = zarr.open_group(str(out), mode="w")
    group.attrs.update(_attributes(trained, chosen, tiling, seed))
    _create_arrays(group, trained, shape, tiling.core, chosen)
    return chosen, tiling


def prediction_arrays(out: Path) -> dict[str, Any]:
    """Return the arrays of a prediction group made by :func:`prepare_prediction`, by name."""
    group = zarr.open_group(str(out), mode="r+")
    return {name: group[name] for name in group.array_keys()}


def write_tile(arrays: dict[str, Any], box: Box, tile: Prediction, layout: str) -> None:
    """Write the prediction of one tile's core box into the arrays of a prediction group."""
    values = _named(tile) if layout == "samples" else _moments(tile, _spaces(arrays))
    values[UNCERTAINTY] = mutual_information(tile.foreground)
    for name, value in values.items():
        arrays[name][(..., *box)] = value.astype(arrays[name].dtype)


def iterate_tiles(
    trained: TrainedModel, raw: Any, tiling: Tiling, seed: int = 0, threads: int | None = None
) -> Iterator[tuple[Box, Prediction]]:
    """Yield (core box, prediction of that core) for every tile of raw (C, Z, Y, X).

    threads: torch's intra-op threads (None: the checkpoint's ``train.threads``). Callers
    with a project pass its own: a checkpoint trained elsewhere must not decide how many
    threads a worker here runs, and the bits of a result depend on the count.
    """
    shape = _spatial_shape(raw, trained)
    with torch_threads(trained.config.train.threads if threads is None else threads):
        calibrate(trained, raw)
        for box in tiling.boxes(shape):
            yield box, predict_tile(trained, raw, box, tiling.margin, seed)


def calibrate(trained: TrainedModel, raw: Any) -> None:
    """Set the model's normalization statistics to those of raw (C, Z, Y, X), as GroupNorm
    computes them over one input: the whole volume's when it fits CALIBRATION_BOX, else those
    of CALIBRATION_BOXES such boxes spread over it. Every later pass uses them."""
    shape = _spatial_shape(raw, trained)
    size = tuple(min(c, n) for c, n in zip(CALIBRATION_BOX, shape, strict=True))
    padded = _round_up(size, trained.model.divisor())
    batch = np.stack(
        [
            _read_normalized(
                trained, raw, start, [s + p for s, p in zip(start, padded, strict=True)]
            )
            for start in calibration_starts(shape, size)
        ]
    )
    model = trained.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for net in model.nets():
                with calibrating(net):
                    net.backbone(torch.from_numpy(batch))
    finally:
        model.train(was_training)


def calibration_starts(shape: Triple, size: tuple[int, ...]) -> list[list[int]]:
    """Return the starts of at most CALIBRATION_BOXES boxes of size inside shape, spread evenly
    over a grid that covers it (one box, at the origin, when size is the whole shape)."""
    axes = [
        np.linspace(0, n - s, -(-n // s)).round().astype(int)
        for n, s in zip(shape, size, strict=True)
    ]
    grid = [list(map(int, start)) for start in product(*axes)]
    picked = np.linspace(0, len(grid) - 1, min(len(grid), CALIBRATION_BOXES)).round()
    return [grid[i] for i in sorted(set(picked.astype(int)))]


def predict_tile(
    trained: TrainedModel, raw: Any, box: Box, margin: Triple, seed: int = 0
) -> Prediction:
    """Return the prediction of one core box of raw (C, Z, Y, X), read with margin context."""
    divisor = trained.model.divisor()
    size = [b.stop - b.start for b in box]
    padded = _round_up(tuple(size), divisor)
    start = [b.start - m for b, m in zip(box, margin, strict=True)]
    stop = [s + p + 2 * m for s, p, m in zip(start, padded, margin, strict=True)]
    batch = torch.from_numpy(_read_normalized(trained, raw, start, stop))[None]
    keep = _box(margin, (size[0], size[1], size[2]), (1 << 62,) * 3)
    samples = trained.model.sample(batch, seed=seed, keep=keep)
    var, scale = samples.aleatoric_var, samples.embedding_scale
    return Prediction(
        samples.foreground[:, 0].numpy(),
        samples.embedding[:, 0].numpy(),
        None if var is None else var[:, 0].numpy(),
        None if scale is None else scale[:, 0].numpy(),
    )


def _read_normalized(
    trained: TrainedModel, raw: Any, start: list[int], stop: list[int]
) -> npt.NDArray[np.float32]:
    """Return raw[:, start:stop] normalized, zero (background) where it lies outside raw."""
    shape = raw.shape[1:]
    inner = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, shape, strict=True))
    region = np.zeros(
        (raw.shape[0], *(b - a for a, b in zip(start, stop, strict=True))), np.float32
    )
    if all(s.stop > s.start for s in inner):
        placed = tuple(slice(s.start - a, s.stop - a) for s, a in zip(inner, start, strict=True))
        region[(slice(None), *placed)] = trained.normalization.apply(
            np.asarray(raw[(slice(None), *inner)])
        )
    return region


def _spatial_shape(raw: Any, trained: TrainedModel) -> Triple:
    """Return the (Z, Y, X) shape of raw after checking it is (C, Z, Y, X) with C channels."""
    shape = tuple(raw.shape)
    if len(shape) != 4:
        raise InputError(f"raw must be 4-D (C, Z, Y, X), got shape {shape}")
    if shape[0] != trained.normalization.channels:
        raise InputError(
            f"raw has {shape[0]} channels, the model {trained.path} expects "
            f"{trained.normalization.channels}"
        )
    return shape[1], shape[2], shape[3]


def _named(tile: Prediction) -> dict[str, npt.NDArray[np.float32]]:
    """Return the per-sample arrays of a tile by output name."""
    named = {"foreground": tile.foreground, "embedding": tile.embedding}
    if tile.aleatoric_var is not None:
        named["aleatoric_var"] = tile.aleatoric_var
    if tile.embedding_scale is not None:
        named["embedding_scale"] = tile.embedding_scale
    return named


def _moments(tile: Prediction, spaces: int) -> dict[str, npt.NDArray[np.float32]]:
    """Return per-voxel mean and variance over the S samples of a tile, by output name; the
    embedding's mean is taken per embedding space when there are several (see the module)."""
    embedding = tile.embedding
    moments = {
        "foreground_mean": tile.foreground.mean(axis=0),
        "foreground_var": tile.foreground.var(axis=0),
        "embedding_mean": _space_means(embedding, spaces),
        "embedding_var": embedding.var(axis=0).sum(axis=0),
    }
    if tile.aleatoric_var is not None:
        moments["aleatoric_var"] = tile.aleatoric_var.mean(axis=0)
    if tile.embedding_scale is not None:
        moments["embedding_scale"] = tile.embedding_scale.mean(axis=0)
    return moments


def _space_means(embedding: npt.NDArray[np.float32], spaces: int) -> npt.NDArray[np.float32]:
    """Return the mean over samples of embedding (S, E, Z, Y, X): (E, Z, Y, X) for one space,
    else (K, E, Z, Y, X), the mean of each of K equal consecutive groups of samples."""
    if spaces == 1:
        return embedding.mean(axis=0)
    return embedding.reshape(spaces, -1, *embedding.shape[1:]).mean(axis=1)


def _spaces(arrays: dict[str, Any]) -> int:
    """Return the embedding spaces of a moments prediction: its embedding_mean's member axis."""
    embedding_mean = arrays["embedding_mean"]
    return int(embedding_mean.shape[0]) if embedding_mean.ndim == 5 else 1


def _choose_layout(trained: TrainedModel, shape: Triple, layout: Layout, budget: int) -> str:
    if layout != "auto":
        return layout
    model = trained.config.model
    voxels = int(np.prod(shape))
    needed = trained.model.n_samples * (model.embed_dim + 1 + 2 * int(model.aleatoric)) * voxels * 2
    return "samples" if needed <= budget else "moments"


def _create_arrays(
    group: zarr.Group, trained: TrainedModel, shape: Triple, core: Triple, layout: str
) -> dict[str, Any]:
    """Create and return the output arrays of a layout, chunked by the tiling's cores."""
    s, e = trained.model.n_samples, trained.config.model.embed_dim
    k = trained.config.model.embedding_spaces
    chunk = tuple(min(c, n) for c, n in zip(core, shape, strict=True))
    if layout == "samples":
        specs: dict[str, tuple[tuple[int, ...], type[np.floating[Any]]]] = {
            "foreground": ((s,), np.float16),
            "embedding": ((s, e), np.float16),
            "aleatoric_var": ((s,), np.float16),
            "embedding_scale": ((s,), np.float16),
        }
    else:
        specs = {
            "foreground_mean": ((), np.float32),
            "foreground_var": ((), np.float32),
            "embedding_mean": ((e,) if k == 1 else (k, e), np.float16),
            "embedding_var": ((), np.float32),
            "aleatoric_var": ((), np.float32),
            "embedding_scale": ((), np.float32),
        }
    specs[UNCERTAINTY] = ((), np.float32)
    if not trained.config.model.aleatoric:
        specs.pop("aleatoric_var")
        specs.pop("embedding_scale")
    return {
        name: group.create_array(
            name,
            shape=(*lead, *shape),
            chunks=(*(1 for _ in lead), *chunk),
            dtype=dtype,
            fill_value=0,
        )
        for name, (lead, dtype) in specs.items()
    }


def _attributes(trained: TrainedModel, layout: str, tiling: Tiling, seed: int) -> dict[str, Any]:
    return {
        "layout": layout,
        "samples": trained.model.n_samples,
        "kind": trained.config.model.kind,
        "checkpoint": str(trained.path) if trained.path else None,
        "tile_core": list(tiling.core),
        "tile_margin": list(tiling.margin),
        "seed": seed,
    }


def _round_up(size: tuple[int, ...], divisor: Triple) -> Triple:
    """Return size rounded up, per axis, to a multiple of divisor."""
    z, y, x = (-(-n // d) * d for n, d in zip(size, divisor, strict=True))
    return z, y, x


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch limited to threads intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
