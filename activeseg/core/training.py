"""Training on sparsely labeled crops: random augmented patches, one checkpoint folder out.

Ensemble members train side by side, one optimizer step each per training step, each from its
own initialization and its own data order; the recorded loss of a step is their mean.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from activeseg.config import Config, Triple
from activeseg.core.models.checkpoint import load_model, save_checkpoint
from activeseg.core.models.losses import Target, segmentation_loss
from activeseg.core.models.normalization import Normalization
from activeseg.core.models.probabilistic import ProbabilisticModel, SegmentationNet
from activeseg.errors import InputError, StateError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]
# Tries to find a random patch that holds annotated voxels before taking any patch.
PATCH_TRIES = 10
# Two neurons touch where their annotated voxels lie within this many voxels (per axis).
CONTACT_REACH = 2


@dataclass(frozen=True)
class TrainingCrop:
    """One labeled crop.

    raw: (C, Z, Y, X) any numeric dtype. labels: (Z, Y, X) uint32, 0 = background.
    mask: (Z, Y, X) bool, the voxels that were annotated (the loss ignores the rest).
    overlap: (Z, Y, X) bool, voxels that belong to two or more neurons.
    name: where the crop comes from, for error messages.
    """

    raw: npt.NDArray[np.generic]
    labels: npt.NDArray[np.uint32]
    mask: npt.NDArray[np.bool_]
    overlap: npt.NDArray[np.bool_]
    name: str = "crop"

    def __post_init__(self) -> None:
        if self.raw.ndim != 4:
            raise InputError(f"{self.name}: raw must be (C, Z, Y, X), got {self.raw.shape}")
        for field in ("labels", "mask", "overlap"):
            shape = getattr(self, field).shape
            if shape != self.raw.shape[1:]:
                raise InputError(
                    f"{self.name}: {field} has shape {shape}, raw has {self.raw.shape[1:]}"
                )


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    losses: the loss of every step (the mean over ensemble members); final_loss: the mean of
    the last tenth of them. precision: what the forward passes ran in (float32, bfloat16).
    """

    checkpoint: Path
    steps: int
    final_loss: float
    seconds: float
    losses: tuple[float, ...]
    precision: str


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel training (``torch.distributed`` initialized):
    every process draws the same global batch from the same seeds and trains on its slice
    ``rank`` of ``world``; gradients and the loss are averaged over the processes at every
    step, as DistributedDataParallel does, so N processes follow one process's training."""

    rank: int
    world: int

    def part(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        """Return this process's slice of a global batch (its size divides by world)."""
        if x.shape[0] % self.world:
            raise InputError(
                f"train.batch_size {x.shape[0]} does not divide among {self.world} processes"
            )
        n = x.shape[0] // self.world
        keep = slice(self.rank * n, (self.rank + 1) * n)
        return x[keep], Target(target.labels[keep], target.mask[keep], target.overlap[keep])

    def average_gradients(self, net: torch.nn.Module) -> None:
        """Replace net's gradients by their mean over the processes (one all-reduce)."""
        import torch.distributed as dist

        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def mean(self, value: float) -> float:
        """Return the mean of value over the processes."""
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total[0]) / self.world


@dataclass(frozen=True)
class PreparedCrop:
    """A crop with normalized float32 raw (C, Z, Y, X) and int64 labels (Z, Y, X); contacts:
    (K, 3) int64 coordinates of the annotated neuron voxels that touch another neuron (none
    unless they were asked for)."""

    raw: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    mask: npt.NDArray[np.bool_]
    overlap: npt.NDArray[np.bool_]
    contacts: npt.NDArray[np.int64]


def train_model(
    crops: Sequence[TrainingCrop],
    config: Config,
    out_dir: Path,
    *,
    init_from: Path | None = None,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> TrainResult:
    """Return the result of training config's model on crops; the checkpoint goes to out_dir.

    init_from: a checkpoint folder whose weights start the training (warm start); its model
    section must equal config.model. progress(step, total_steps, loss) is called every step.
    shard: this process's part of a data-parallel training; only rank 0 writes the checkpoint.
    Raises StateError when no crop has an annotated voxel.
    """
    model_config = config.model.with_channels(int(crops[0].raw.shape[0])) if crops else None
    if model_config is not None:
        config = config.model_copy(update={"model": model_config})
    _check_crops(crops, config)
    device = training_device(config)
    if shard is not None and device.type == "cuda":
        device = torch.device("cuda", shard.rank % torch.cuda.device_count())
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    try:
        normalization = Normalization.from_volumes(
            [c.raw for c in crops], config.train.seed, config.model.intensity
        )
        find_contacts = config.train.contact_fraction > 0
        prepared = [prepare_crop(crop, normalization, find_contacts) for crop in crops]
        model = _initial_model(config, init_from).to(device)
        bfloat16 = uses_bfloat16(config, device)
        precision = "bfloat16" if bfloat16 else "float32"
        losses = _optimize(model, prepared, config, bfloat16, progress, shard)
        model.to("cpu")
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started
    final = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    training = {
        "steps": len(losses),
        "members": len(model.nets()),
        "crops": len(crops),
        "seconds": seconds,
        "final_loss": final,
        "init_from": str(init_from) if init_from else None,
        "precision": precision,
        "losses": losses,
    }
    if shard is None or shard.rank == 0:
        save_checkpoint(Path(out_dir), model, config, normalization, training)
    logger.info(
        "trained %d steps (%s) in %.0f s, final loss %.4f", len(losses), precision, seconds, final
    )
    return TrainResult(Path(out_dir), len(losses), final, seconds, tuple(losses), precision)


def training_device(config: Config) -> torch.device:
    """Return the device config trains on: the GPU for "auto" when torch sees one."""
    if config.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device is cuda, but torch sees no GPU on this machine")
    return torch.device(config.train.device)


def uses_bfloat16(config: Config, device: torch.device) -> bool:
    """Return whether training runs the forward pass in bfloat16 on device (losses and
    weights stay float32)."""
    if config.train.precision != "auto":
        return config.train.precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _check_crops(crops: Sequence[TrainingCrop], config: Config) -> None:
    if not crops:
        raise StateError("no labeled crops to train on")
    if not any(bool(crop.mask.any()) for crop in crops):
        raise StateError(f"none of the {len(crops)} training crops has an annotated voxel")
    for crop in crops:
        if crop.raw.shape[0] != config.model.in_channels:
            raise InputError(
                f"{crop.name}: raw has {crop.raw.shape[0]} channels, "
                f"model.in_channels is {config.model.in_channels}"
            )


def prepare_crop(
    crop: TrainingCrop, normalization: Normalization, find_contacts: bool = False
) -> PreparedCrop:
    """Return the crop with normalized raw, ready for patch sampling; its contacts are listed
    only with find_contacts (patches placed on contacts need them, and a big crop's search
    costs time and memory)."""
    labels = crop.labels.astype(np.int64)
    mask = crop.mask.astype(bool)
    return PreparedCrop(
        normalization.apply(crop.raw),
        labels,
        mask,
        crop.overlap.astype(bool),
        contacts(labels, mask) if find_contacts else np.zeros((0, 3), np.int64),
    )


def contacts(labels: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Return the (K, 3) coordinates of annotated neuron voxels that have an annotated voxel of
    another neuron within CONTACT_REACH voxels: where touching neurons merge if anywhere."""
    touching = contact_voxels(torch.from_numpy(labels)[None], torch.from_numpy(mask)[None])
    return np.argwhere(touching[0].numpy()).astype(np.int64)


def contact_voxels(
    labels: torch.Tensor, annotated: torch.Tensor, reach: int = CONTACT_REACH
) -> torch.Tensor:
    """Return where (bool, like labels (B, Z, Y, X)) an annotated neuron voxel has an annotated
    voxel of another neuron within reach voxels along every axis."""
    known = torch.where(annotated, labels, 0)
    highest = _box_extreme(known, reach, torch.maximum, 0)
    beyond = int(known.max()) + 1  # background counts as above every neuron for the minimum
    lowest = _box_extreme(torch.where(known > 0, known, beyond), reach, torch.minimum, beyond)
    return (known > 0) & (highest != lowest)


def _box_extreme(
    x: torch.Tensor,
    reach: int,
    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    fill: int,
) -> torch.Tensor:
    """Return pick (maximum or minimum) of x (B, Z, Y, X) over the voxels within reach of each
    voxel along every axis, one axis at a time, fill beyond the edges (faster than max_pool3d
    on the CPU, see BENCHMARKS.md, Session 12, and it works on integers)."""
    for axis in (1, 2, 3):
        n = x.shape[axis]
        edge = x.new_full((*x.shape[:axis], reach, *x.shape[axis + 1 :]), fill)
        padded = torch.cat([edge, x, edge], dim=axis)
        out = padded.narrow(axis, 0, n)
        for shift in range(1, 2 * reach + 1):
            out = pick(out, padded.narrow(axis, shift, n))
        x = out
    return x


def _initial_model(config: Config, init_from: Path | None) -> ProbabilisticModel:
    """Return a freshly initialized model, or one warm-started from a checkpoint."""
    torch.manual_seed(config.train.seed)
    model = ProbabilisticModel(config.model, seed=config.train.seed)
    if init_from is not None:
        previous = load_model(Path(init_from))
        if previous.config.model != config.model:
            raise InputError(
                f"cannot warm-start from {init_from}: its model section differs from the config"
            )
        model.load_state_dict(previous.model.state_dict())
        logger.info("warm start from %s", init_from)
    return model


def _optimize(
    model: ProbabilisticModel,
    prepared: Sequence[PreparedCrop],
    config: Config,
    bfloat16: bool,
    progress: Progress | None,
    shard: Shard | None = None,
) -> list[float]:
    """Return the per-step losses of training every member of model for config.train.steps."""
    steps = config.train.steps
    nets = model.nets()
    # Each member draws its own patches: the data order is part of what makes members differ.
    rngs = [np.random.default_rng([config.train.seed, k]) for k in range(len(nets))]
    optimizers = [torch.optim.Adam(net.parameters(), lr=config.train.lr) for net in nets]
    schedules = [
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.05 * config.train.lr)
        for opt in optimizers
    ]
    model.train()
    losses = []
    for step in range(steps):
        step_losses = [
            _train_step(net, opt, prepared, config, bfloat16, rng, shard)
            for net, opt, rng in zip(nets, optimizers, rngs, strict=True)
        ]
        for schedule in schedules:
            schedule.step()
        losses.append(float(np.mean(step_losses)))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
        if (step + 1) % 50 == 0:
            logger.info("step %d/%d loss %.4f", step + 1, steps, losses[-1])
    model.eval()
    return losses


def _train_step(
    net: SegmentationNet,
    optimizer: torch.optim.Optimizer,
    prepared: Sequence[PreparedCrop],
    config: Config,
    bfloat16: bool,
    rng: np.random.Generator,
    shard: Shard | None = None,
) -> float:
    """Return the loss of one optimizer step of net on a random augmented batch."""
    train = config.train
    x, target = sample_batch(prepared, train.patch, train.batch_size, rng, train.contact_fraction)
    if shard is not None:
        x, target = shard.part(x, target)
    device = next(net.parameters()).device
    target = Target(target.labels.to(device), target.mask.to(device), target.overlap.to(device))
    with torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
        output = net(x.to(device), target)  # the probabilistic U-Net's posterior sees target
    terms = segmentation_loss(output.float(), target, config.loss)
    # KL of the variational kinds (bbb, probunet); zero for the others
    total = terms.total + config.model.kl_weight * net.kl_divergence().float()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if shard is not None:
        shard.average_gradients(net)
    optimizer.step()
    loss = float(total.detach())
    return loss if shard is None else shard.mean(loss)


def sample_batch(
    prepared: Sequence[PreparedCrop],
    patch: Triple,
    batch_size: int,
    rng: np.random.Generator,
    contact_fraction: float = 0.0,
) -> tuple[torch.Tensor, Target]:
    """Return a batch: raw (B, C, *patch) float32 and its Target, from random augmented patches;
    each patch holds a contact between two neurons with probability contact_fraction (where
    any crop has one), and lies anywhere else."""
    parts = [
        _augment(_random_patch(prepared, patch, rng, contact_fraction), rng)
        for _ in range(batch_size)
    ]
    raw, labels, mask, overlap = (np.stack(arrays) for arrays in zip(*parts, strict=True))
    target = Target(torch.from_numpy(labels), torch.from_numpy(mask), torch.from_numpy(overlap))
    return torch.from_numpy(raw), target


_T = TypeVar("_T", bound=np.generic)
_Patch = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]
]


def _random_patch(
    prepared: Sequence[PreparedCrop],
    patch: Triple,
    rng: np.random.Generator,
    contact_fraction: float,
) -> _Patch:
    """Return (raw, labels, mask, overlap) of a random patch, preferring annotated ones."""
    touching = [p for p in prepared if len(p.contacts)] if contact_fraction else []
    if touching and rng.random() < contact_fraction:
        crop = touching[rng.integers(len(touching))]
        voxel = crop.contacts[rng.integers(len(crop.contacts))]
        # anywhere in the patch but CONTACT_REACH from its faces: the other neuron is in it too
        margins = [min(CONTACT_REACH, (p - 1) // 2) for p in patch]
        starts = [
            int(np.clip(v - rng.integers(m, p - m), 0, max(n - p, 0)))
            for v, n, p, m in zip(voxel, crop.labels.shape, patch, margins, strict=True)
        ]
        box = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
    else:
        crop, box = _annotated_box(prepared, patch, rng)
    return (
        _pad_to(crop.raw[(slice(None), *box)], patch),
        _pad_to(crop.labels[box], patch),
        _pad_to(crop.mask[box], patch),
        _pad_to(crop.overlap[box], patch),
    )


def _annotated_box(
    prepared: Sequence[PreparedCrop], patch: Triple, rng: np.random.Generator
) -> tuple[PreparedCrop, tuple[slice, ...]]:
    """Return a random crop and patch box in it, preferring boxes with annotated voxels."""
    candidates = [p for p in prepared if p.mask.any()]
    for attempt in range(PATCH_TRIES):
        crop = candidates[rng.integers(len(candidates))]
        starts = [
            rng.integers(max(n - p, 0) + 1) for n, p in zip(crop.labels.shape, patch, strict=True)
        ]
        box = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
        if crop.mask[box].any() or attempt == PATCH_TRIES - 1:
            break
    return crop, box


def _pad_to(array: npt.NDArray[_T], patch: Triple) -> npt.NDArray[_T]:
    """Return array (..., Z, Y, X) zero-padded at the end to (..., *patch)."""
    missing = [p - n for n, p in zip(array.shape[-3:], patch, strict=True)]
    if not any(missing):
        return array
    widths = [(0, 0)] * (array.ndim - 3) + [(0, m) for m in missing]
    return np.pad(array, widths)


def _augment(patch: _Patch, rng: np.random.Generator) -> _Patch:
    """Return the patch randomly flipped, rotated in-plane, channel-shuffled and jittered.

    MCFO colours are stochastic: which channels a neuron expresses says nothing about what it
    is, so shuffling the channels keeps the network from tying embeddings to the few colours
    of the training neurons (it must separate neurons by colour difference instead).
    """
    flips = tuple(axis for axis in (-3, -2, -1) if rng.random() < 0.5)
    square = patch[1].shape[-1] == patch[1].shape[-2]
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    raw, labels, mask, overlap = patch
    shuffled = raw[rng.permutation(raw.shape[0])]
    return (
        _jitter_intensity(_move(shuffled, flips, turns), rng),
        _move(labels, flips, turns),
        _move(mask, flips, turns),
        _move(overlap, flips, turns),
    )


def _move(array: npt.NDArray[_T], flips: tuple[int, ...], turns: int) -> npt.NDArray[_T]:
    """Return array (..., Z, Y, X) flipped along flips, then turned 90 degrees turns times in YX."""
    return np.ascontiguousarray(np.rot90(np.flip(array, flips), turns, axes=(-2, -1)))


def _jitter_intensity(
    raw: npt.NDArray[np.float32], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Return raw (C, Z, Y, X) with a random gain and offset per channel and a little noise."""
    channels = raw.shape[0]
    gain = rng.uniform(0.8, 1.2, channels).astype(np.float32).reshape(-1, 1, 1, 1)
    offset = rng.uniform(-0.1, 0.1, channels).astype(np.float32).reshape(-1, 1, 1, 1)
    noise = rng.normal(0.0, rng.uniform(0.0, 0.05), raw.shape).astype(np.float32)
    return raw * gain + offset + noise
