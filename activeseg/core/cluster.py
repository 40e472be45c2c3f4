"""Embeddings → instances: mean shift of foreground voxel embeddings, with torch.

A U-Net embeds every voxel so that voxels of one neuron lie close together and different
neurons lie far apart (the discriminative loss: points within ``delta_v`` of their centre,
centres ``2 * delta_d`` apart). Mean shift finds the dense modes of the foreground embeddings;
each mode is one instance.

The implementation is built for 10^5 to 10^6 points on a CPU or one GPU (it runs on the input
tensor's device):

- seeds are one point of each occupied cell of a grid of cell size ``bandwidth`` (two sigmas
  for the Gaussian kernel; binning), fullest cells first, in rounds of growing size (64, 256,
  ... at most ``max_seeds``); after each round only cells whose points no mode explains yet
  (all farther than that from every mode) are seeded, each cell once, so a cluster costs a few
  seeds, not one per cell;
- the density is estimated from at most ``max_points`` points drawn at random;
- seeds move by batched kernel means, computed for a chunk of seeds x all points at a time, so
  no N x N matrix ever exists; seeds that stopped moving leave the batch, and seeds that ride
  together (closer than 1 % of the bandwidth) are fused, so later iterations are cheap;
- modes closer than ``merge_fraction * bandwidth`` are merged, the denser one surviving;
- every point joins its nearest mode; clusters under ``min_size`` points become background (0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from skimage.measure import label as label_components

from activeseg.errors import InputError

logger = logging.getLogger(__name__)

Kernel = Literal["flat", "gaussian"]

# Entries of one seeds x points distance block: 2^20 float32 = 4 MiB, small enough that the
# passes over a block (distances, threshold, weighted sum) find it in cache.
_BLOCK_ENTRIES = 2**20
# Seeds closer than this fraction of the bandwidth follow the same path: fuse them.
_FUSE_FRACTION = 0.01
# A Gaussian mode explains the points within this many sigmas: seeding only farther points
# (and binning seeds at this scale) found the same clusters faster than within one sigma
# (see BENCHMARKS.md, Session 7).
_REACH_SIGMAS = 2.0
# A seed has converged when it moves less than this fraction of the bandwidth (as sklearn).
_STOP_FRACTION = 1e-3
# Seeding rounds at most; after the first, a round seeds only cells no mode explains yet.
_SEEDING_ROUNDS = 5
# Seeds of the first round, and by how much each later round grows (up to max_seeds).
_FIRST_ROUND_SEEDS = 64
_ROUND_GROWTH = 4
# Seeds first climb the density of this many points, then the survivors that of max_points.
_COARSE_POINTS = 5_000
# Odd 63-bit multipliers hashing integer grid cells of up to 64 dimensions to one int64 key.
_HASH_MULTIPLIERS = [
    int(m) | 1 for m in np.random.default_rng(20240601).integers(1, 2**62, size=64)
]


@dataclass(frozen=True)
class _Settings:
    bandwidth: float
    kernel: Kernel
    max_seeds: int
    min_size: int
    max_iter: int
    merge_fraction: float
    max_points: int

    @property
    def reach(self) -> float:
        """Distance within which a mode explains a point: the window, or two sigmas."""
        return self.bandwidth * (_REACH_SIGMAS if self.kernel == "gaussian" else 1.0)


def mean_shift(
    points: torch.Tensor,
    bandwidth: float,
    *,
    kernel: Kernel = "flat",
    max_seeds: int = 2000,
    min_size: int = 0,
    max_iter: int = 50,
    merge_fraction: float = 0.5,
    max_points: int = 50_000,
    seed: int = 0,
) -> torch.Tensor:
    """Return (N,) int64 cluster labels 1..K (largest cluster first); 0 = cluster too small.

    points: (N, E) float embeddings, on any device; the work runs there.
    bandwidth: kernel radius (flat) or standard deviation (gaussian), in embedding units.
    kernel: "flat" (mean of the points within ``bandwidth``) or "gaussian".
    max_seeds: at most this many seeds per seeding round (the first rounds seed 64, 256, ...).
    min_size: clusters with fewer points are dropped (their points get label 0).
    max_iter: mean-shift iterations per seed at most.
    merge_fraction: modes closer than ``merge_fraction * bandwidth`` are one cluster.
    max_points: the density is estimated from at most this many points, drawn at random
        (modes barely move; the cost stops growing with N). Every point is still assigned.
    seed: seed of the random choice of the points that estimate the density.
    """
    settings = _Settings(
        bandwidth, kernel, max_seeds, min_size, max_iter, merge_fraction, max_points
    )
    _check_points(points, settings)
    x = points if points.dtype in (torch.float32, torch.float64) else points.float()
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.int64, device=points.device)
    generator = torch.Generator().manual_seed(seed)
    modes = _find_modes(x, settings, generator)
    nearest, _ = _nearest_mode(x, modes)
    logger.debug("mean shift: %d points, %d modes", len(x), len(modes))
    return _relabel_by_size(nearest + 1, min_size)


def segment(
    foreground: npt.ArrayLike,
    embeddings: npt.ArrayLike,
    *,
    threshold: float,
    bandwidth: float,
    min_size: int,
    max_seeds: int = 2000,
    kernel: Kernel = "flat",
    merge_fraction: float = 0.5,
    seed: int = 0,
    split_disconnected: bool = False,
    device: str | torch.device = "cpu",
) -> npt.NDArray[np.uint32]:
    """Return a (Z, Y, X) uint32 instance label image (0 = background) from embeddings.

    foreground: (Z, Y, X) float foreground probability; voxels above ``threshold`` are clustered.
    embeddings: (E, Z, Y, X) float per-voxel embeddings.
    split_disconnected: give every 26-connected piece of a cluster its own id and drop pieces
        under ``min_size``. A neuron cluster in spatially disjoint pieces is a typical error,
        but a dim neuron whose foreground is interrupted is split as well, so it is off by default.
    The remaining keywords are those of :func:`mean_shift`; ``device`` is where it runs.
    """
    fg, emb = _check_volumes(foreground, embeddings)
    mask = fg > threshold
    points = torch.from_numpy(np.ascontiguousarray(emb[:, mask].T)).to(device)
    labels = mean_shift(
        points,
        bandwidth,
        kernel=kernel,
        max_seeds=max_seeds,
        min_size=min_size,
        merge_fraction=merge_fraction,
        seed=seed,
    )
    image = np.zeros(mask.shape, np.uint32)
    image[mask] = labels.cpu().numpy()
    return _split_components(image, min_size) if split_disconnected else image


def segment_samples(
    foreground: npt.ArrayLike,
    embeddings: npt.ArrayLike,
    *,
    threshold: float,
    bandwidth: float,
    min_size: int,
    max_seeds: int = 2000,
    kernel: Kernel = "flat",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> npt.NDArray[np.uint32]:
    """Return (S, Z, Y, X) uint32 label images: each sample segmented on its own.

    foreground: (S, Z, Y, X) float foreground probability of each sample.
    embeddings: (S, E, Z, Y, X) float embeddings of each sample.
    Ids of different samples are unrelated. Keywords as in :func:`segment`.
    """
    fg, emb = np.asarray(foreground), np.asarray(embeddings)
    if fg.ndim != 4 or emb.ndim != 5 or len(fg) != len(emb):
        raise InputError(
            f"samples need foreground (S, Z, Y, X) and embeddings (S, E, Z, Y, X), "
            f"got {fg.shape} and {emb.shape}"
        )
    images = [
        segment(
            f,
            e,
            threshold=threshold,
            bandwidth=bandwidth,
            min_size=min_size,
            max_seeds=max_seeds,
            kernel=kernel,
            seed=seed,
            device=device,
        )
        for f, e in zip(fg, emb, strict=True)
    ]
    return np.stack(images).reshape(fg.shape).astype(np.uint32)


def segment_consensus(
    foreground: npt.ArrayLike,
    embeddings: npt.ArrayLike,
    *,
    threshold: float,
    bandwidth: float,
    min_size: int,
    max_seeds: int = 2000,
    kernel: Kernel = "flat",
    seed: int = 0,
    device: str | torch.device = "cpu",
    shared_space: bool = True,
    spaces: int | None = None,
) -> npt.NDArray[np.uint32]:
    """Return the (Z, Y, X) uint32 consensus segmentation of S samples.

    foreground: (S, Z, Y, X) float; embeddings: (S, E, Z, Y, X) float.
    spaces: how many embedding spaces the samples come in, in equal consecutive groups (one
    per independently trained member; None: 1 when ``shared_space``, else S). Averaging
    embeddings is only meaningful within one space (heads or dropout passes of one network);
    independently trained members embed into spaces that differ by an arbitrary rotation. With
    one space the sample mean of foreground and embeddings is clustered; with several, the mean
    foreground of all samples is clustered in each member's mean embedding and the members'
    instances are matched and fused by vote (:func:`fuse_segmentations`), so every member counts.
    """
    fg, emb = np.asarray(foreground), np.asarray(embeddings)
    if fg.ndim != 4 or emb.ndim != 5 or len(fg) != len(emb):
        raise InputError(
            f"samples need foreground (S, Z, Y, X) and embeddings (S, E, Z, Y, X), "
            f"got {fg.shape} and {emb.shape}"
        )
    groups = (1 if shared_space else len(fg)) if spaces is None else spaces
    if groups < 1 or len(fg) % groups:
        raise InputError(f"{len(fg)} samples do not split into {groups} embedding spaces")
    mean_fg = fg.mean(axis=0)
    per_member = emb.reshape(groups, len(fg) // groups, *emb.shape[1:]).mean(axis=1)
    members = [
        segment(
            mean_fg,
            member,
            threshold=threshold,
            bandwidth=bandwidth,
            min_size=min_size,
            max_seeds=max_seeds,
            kernel=kernel,
            seed=seed,
            device=device,
        )
        for member in per_member
    ]
    if groups == 1:
        return members[0]
    return fuse_segmentations(np.stack(members), min_size=min_size)


# Two members' instances are the same neuron when their IoU exceeds this; above 0.5 an
# instance can match at most one instance of another segmentation.
MATCH_IOU = 0.5


def fuse_segmentations(labels: npt.ArrayLike, *, min_size: int = 0) -> npt.NDArray[np.uint32]:
    """Return the (Z, Y, X) uint32 fusion of K segmentations (K, Z, Y, X) of one volume.

    Instances of different segmentations whose IoU exceeds MATCH_IOU are one neuron (matches
    chain: a group holds every instance linked to it). Each voxel takes the group most of the
    segmentations give it (ties: the group more segmentations found), background where none
    gives it one; ids follow decreasing size, fused instances under min_size become background.
    No segmentation is the reference: relabelling or reordering them changes nothing but ids.
    """
    stack = np.asarray(labels)
    if stack.ndim != 4 or stack.dtype.kind not in "ui":
        raise InputError(f"fusion needs (K, Z, Y, X) integer labels, got {stack.shape}")
    ids = [np.unique(member[member > 0]) for member in stack]
    offsets = np.cumsum([0] + [len(i) for i in ids])
    if offsets[-1] == 0:  # no segmentation found anything
        return np.zeros(stack.shape[1:], np.uint32)
    parent = np.arange(offsets[-1])
    for a in range(len(stack)):
        for b in range(a + 1, len(stack)):
            for i, j in _matches(stack[a], stack[b], ids[a], ids[b]):
                _union(parent, offsets[a] + i, offsets[b] + j)
    group_of = np.array([_root(parent, n) for n in range(offsets[-1])], np.int64)
    support = np.bincount(group_of, minlength=offsets[-1])
    votes = np.full(stack.shape, -1, np.int64)  # each segmentation's group per voxel
    for k, member in enumerate(stack):
        inside = member > 0
        votes[k][inside] = group_of[offsets[k] + np.searchsorted(ids[k], member[inside])]
    fused = _plurality(votes, support)
    image = torch.from_numpy(fused.ravel() + 1)
    return _relabel_by_size(image, min_size).numpy().reshape(fused.shape).astype(np.uint32)


def _matches(
    a: npt.NDArray[np.integer], b: npt.NDArray[np.integer],
    ids_a: npt.NDArray[np.integer], ids_b: npt.NDArray[np.integer],
) -> list[tuple[int, int]]:  # fmt: skip
    """Return (index in ids_a, index in ids_b) of instance pairs of a and b with IoU > MATCH_IOU."""
    both = (a > 0) & (b > 0)
    ia, ib = np.searchsorted(ids_a, a[both]), np.searchsorted(ids_b, b[both])
    pairs, counts = np.unique(ia * len(ids_b) + ib, return_counts=True)
    size_a = np.bincount(np.searchsorted(ids_a, a[a > 0]), minlength=len(ids_a))
    size_b = np.bincount(np.searchsorted(ids_b, b[b > 0]), minlength=len(ids_b))
    i, j = np.divmod(pairs, len(ids_b))
    iou = counts / (size_a[i] + size_b[j] - counts)
    keep = iou > MATCH_IOU
    return list(zip(i[keep].tolist(), j[keep].tolist(), strict=True))


def _root(parent: npt.NDArray[np.int64], n: int) -> int:
    while parent[n] != n:
        parent[n] = parent[parent[n]]
        n = int(parent[n])
    return n


def _union(parent: npt.NDArray[np.int64], a: int, b: int) -> None:
    ra, rb = _root(parent, int(a)), _root(parent, int(b))
    parent[max(ra, rb)] = min(ra, rb)


def _plurality(
    votes: npt.NDArray[np.int64], support: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Return per voxel the group (K, ...) votes name most often (-1: none), ties broken by
    the group's support (how many segmentations found it)."""
    best = np.full(votes.shape[1:], -1, np.int64)
    best_score = np.zeros(votes.shape[1:], np.float64)
    scale = 1.0 / (support.max(initial=0) + 1)
    for k in range(len(votes)):
        named = votes[k] >= 0
        count = (votes == votes[k][None]).sum(axis=0)
        score = np.where(named, count + scale * support[np.maximum(votes[k], 0)], 0.0)
        better = score > best_score
        best[better] = votes[k][better]
        best_score[better] = score[better]
    return best


def _check_points(points: torch.Tensor, settings: _Settings) -> None:
    """Raise InputError unless the points and settings can be clustered."""
    if points.ndim != 2:
        raise InputError(f"mean shift needs (N, E) points, got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise InputError(f"mean shift needs float points, got {points.dtype}")
    if points.shape[1] > len(_HASH_MULTIPLIERS):
        raise InputError(
            f"mean shift supports at most {len(_HASH_MULTIPLIERS)} embedding dimensions, "
            f"got {points.shape[1]}"
        )
    counts = (settings.max_seeds, settings.max_iter, settings.max_points)
    if settings.bandwidth <= 0 or settings.merge_fraction < 0 or min(counts) < 1:
        raise InputError(
            "mean shift needs bandwidth > 0, merge_fraction >= 0 and max_seeds, max_iter, "
            f"max_points >= 1, got {settings}"
        )
    if settings.kernel not in ("flat", "gaussian"):
        raise InputError(f"unknown mean-shift kernel {settings.kernel!r}: use flat or gaussian")


def _check_volumes(
    foreground: npt.ArrayLike, embeddings: npt.ArrayLike
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """Return foreground (Z, Y, X) and embeddings (E, Z, Y, X) as arrays, or raise InputError."""
    fg, emb = np.asarray(foreground), np.asarray(embeddings)
    if fg.ndim != 3 or emb.ndim != 4 or emb.shape[1:] != fg.shape:
        raise InputError(
            f"segment needs foreground (Z, Y, X) and embeddings (E, Z, Y, X) of the same "
            f"volume, got {fg.shape} and {emb.shape}"
        )
    return fg, emb


def _find_modes(x: torch.Tensor, settings: _Settings, generator: torch.Generator) -> torch.Tensor:
    """Return (K, E) modes of the points x (N, E).

    Seeding runs in rounds of growing size, fullest grid cells first: the first few seeds find
    the big clusters, and later rounds seed only not yet seeded cells of the points that no
    mode explains (farther than ``bandwidth`` from every mode), so most cells need no seed.
    """
    fine = _subsample(x, settings.max_points, generator)
    coarse = _subsample(fine, _COARSE_POINTS, generator)
    modes = x.new_zeros((0, x.shape[1]))
    keys = _cell_keys(x, settings.reach)
    unexplained = torch.arange(len(x), device=x.device)
    for round_ in range(_SEEDING_ROUNDS):
        size = min(settings.max_seeds, _FIRST_ROUND_SEEDS * _ROUND_GROWTH**round_)
        seeds, seeded = _bin_seeds(x[unexplained], keys[unexplained], size)
        found = _new_modes(seeds, modes, coarse, fine, settings)
        modes = _merge_modes(torch.cat([modes, found]), fine, settings, keep_empty=False)
        _, distance = _nearest_mode(x[unexplained], modes)
        far = distance > settings.reach
        unexplained = unexplained[far & ~torch.isin(keys[unexplained], seeded)]
        if len(unexplained) < max(settings.min_size, 1):
            break
        logger.debug("mean shift: %d points far from every mode, seeding again", len(unexplained))
    return modes


def _new_modes(
    seeds: torch.Tensor,
    modes: torch.Tensor,
    coarse: torch.Tensor,
    fine: torch.Tensor,
    settings: _Settings,
) -> torch.Tensor:
    """Return (K', E) the modes that seeds (M, E) climb to and no known mode (K, E) explains.

    The seeds first climb the density of the small sample coarse (C, E): cheap, and most seeds
    end on the same few modes. Those within ``bandwidth`` of a known mode are dropped; the
    rest are refined on the large sample fine (F, E).
    """
    rough = _shift_to_modes(seeds, coarse, settings)
    rough = _merge_modes(rough, coarse, settings, keep_empty=True)
    _, distance = _nearest_mode(rough, modes)
    return _shift_to_modes(rough[distance > settings.reach], fine, settings)


def _subsample(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Return at most ``size`` rows of x (N, E), drawn at random without replacement."""
    if len(x) <= size:
        return x
    chosen = torch.randperm(len(x), generator=generator)[:size]
    return x[chosen.to(x.device)]


def _bin_seeds(
    x: torch.Tensor, keys: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (M, E) seeds, one point of each of the ``count`` fullest cells, and (M,) their keys.

    x: (N, E) points; keys: (N,) int64 keys of their grid cells (:func:`_cell_keys`). The seed
    of a cell is its first point, a real point, so it always has itself in its window.
    M = min(count, occupied cells).
    """
    cells, cell_of_point, sizes = torch.unique(keys, return_inverse=True, return_counts=True)
    first = torch.full((len(cells),), len(x), dtype=torch.int64, device=x.device)
    positions = torch.arange(len(x), device=x.device)
    first = first.scatter_reduce(0, cell_of_point, positions, reduce="amin")
    fullest = torch.argsort(sizes, descending=True, stable=True)[:count]
    return x[first[fullest]], cells[fullest]


def _cell_keys(x: torch.Tensor, size: float) -> torch.Tensor:
    """Return (N,) int64 keys of the grid cells (of edge ``size``) holding the points x (N, E).

    The integer cell coordinates are hashed with fixed random odd multipliers (int64
    arithmetic wraps); a collision only fuses two cells, which costs a seed, nothing more.
    """
    cells = torch.floor(x / size).to(torch.int64)
    multipliers = torch.tensor(_HASH_MULTIPLIERS[: x.shape[1]], device=x.device)
    return (cells * multipliers).sum(dim=1)


def _shift_to_modes(seeds: torch.Tensor, x: torch.Tensor, settings: _Settings) -> torch.Tensor:
    """Return the (M', E) places the seeds (M, E) converge to under mean shift over x (N, E).

    A seed with no point in its window stays where it is.
    """
    stop = _STOP_FRACTION * settings.bandwidth
    converged = []
    active = seeds
    for _ in range(settings.max_iter):
        shifted, has_support = _kernel_means(active, x, settings)
        shifted = torch.where(has_support.unsqueeze(1), shifted, active)
        done = torch.linalg.vector_norm(shifted - active, dim=1) < stop
        converged.append(shifted[done])
        active = _fuse(shifted[~done], _FUSE_FRACTION * settings.bandwidth)
        if len(active) == 0:
            break
    return torch.cat([*converged, active])


def _kernel_means(
    seeds: torch.Tensor, x: torch.Tensor, settings: _Settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the kernel-weighted means (M, E) of x (N, E) around the seeds (M, E), and (M,)
    bool: whether any point has weight."""
    means = torch.empty_like(seeds)
    support = torch.empty(len(seeds), dtype=torch.bool, device=seeds.device)
    x_squared = (x * x).sum(dim=1)
    x_and_one = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # weight sums in the matmul
    for block in _blocks(len(seeds), len(x)):
        weighted = _kernel_weights(seeds[block], x, x_squared, settings) @ x_and_one
        total = weighted[:, -1:]
        means[block] = weighted[:, :-1] / total.clamp_min(1e-30)
        support[block] = total[:, 0] > 0
    return means, support


def _kernel_weights(
    seeds: torch.Tensor, x: torch.Tensor, x_squared: torch.Tensor, settings: _Settings
) -> torch.Tensor:
    """Return (M, N) kernel weights between seeds (M, E) and points x (N, E).

    x_squared: (N,) squared norms of x. Distances are formed in place, one pass per step,
    because this block is the whole cost of mean shift.
    """
    h2 = settings.bandwidth**2
    seed_squared = (seeds * seeds).sum(dim=1, keepdim=True)
    partial = torch.addmm(x_squared, seeds, x.T, alpha=-2.0)  # |x|^2 - 2 s.x
    if settings.kernel == "flat":
        return partial.le_(h2 - seed_squared)  # 1.0 inside the window, 0.0 outside
    return partial.add_(seed_squared).clamp_(min=0).mul_(-0.5 / h2).exp_()


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the (A, B) squared Euclidean distances between rows of a (A, E) and b (B, E)."""
    partial = torch.addmm((b * b).sum(dim=1), a, b.T, alpha=-2.0)
    return partial.add_((a * a).sum(dim=1, keepdim=True)).clamp_(min=0)


def _blocks(n_rows: int, n_columns: int) -> list[slice]:
    """Return row slices so that one block of rows x n_columns stays under the size limit."""
    step = max(1, _BLOCK_ENTRIES // max(n_columns, 1))
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def _fuse(seeds: torch.Tensor, radius: float) -> torch.Tensor:
    """Return the seeds (M, E) with those in one grid cell of edge ``radius`` averaged."""
    if len(seeds) < 2:
        return seeds
    _, group, counts = torch.unique(
        _cell_keys(seeds, radius), return_inverse=True, return_counts=True
    )
    sums = seeds.new_zeros((len(counts), seeds.shape[1])).index_add_(0, group, seeds)
    return sums / counts.unsqueeze(1).to(seeds.dtype)


def _merge_modes(
    modes: torch.Tensor, x: torch.Tensor, settings: _Settings, *, keep_empty: bool
) -> torch.Tensor:
    """Return the modes (K, E) left after suppressing each mode near a denser one.

    Density is the number of points of x (N, E) within ``bandwidth``; modes without any are
    dropped unless ``keep_empty`` (a small sample may simply have missed their cluster).
    """
    if len(modes) == 0:
        return modes
    density = _density(modes, x, settings.bandwidth)
    order = torch.argsort(density, descending=True, stable=True)
    if not keep_empty:
        order = order[density[order] > 0]
    radius = settings.merge_fraction * settings.bandwidth
    close = (_squared_distances(modes[order], modes[order]) < radius**2).cpu().numpy()
    kept = _greedy_non_maximum(close)
    return modes[order[torch.from_numpy(kept).to(order.device)]]


def _density(modes: torch.Tensor, x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Return (K,) the number of points x (N, E) within ``bandwidth`` of each mode (K, E)."""
    counts = torch.empty(len(modes), dtype=torch.int64, device=modes.device)
    x_squared = (x * x).sum(dim=1)
    mode_squared = (modes * modes).sum(dim=1, keepdim=True)
    for block in _blocks(len(modes), len(x)):
        partial = torch.addmm(x_squared, modes[block], x.T, alpha=-2.0)  # |x|^2 - 2 m.x
        counts[block] = (partial <= bandwidth**2 - mode_squared[block]).sum(dim=1)
    return counts


def _greedy_non_maximum(close: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Return indices kept walking (K, K) bool ``close`` in order, dropping neighbours of kept."""
    suppressed = np.zeros(len(close), bool)
    kept = []
    for index in range(len(close)):
        if not suppressed[index]:
            kept.append(index)
            suppressed |= close[index]
    return np.array(kept, np.int64)


def _nearest_mode(x: torch.Tensor, modes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (N,) int64 index of the nearest mode (K, E) of each point and (N,) its distance."""
    index = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    distance = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
    if len(modes) == 0:
        return index - 1, distance
    mode_squared = (modes * modes).sum(dim=1)
    for block in _blocks(len(x), len(modes)):
        # |x|^2 is the same for every mode: add it after the minimum, to K times fewer entries.
        partial = torch.addmm(mode_squared, x[block], modes.T, alpha=-2.0)
        smallest, index[block] = partial.min(dim=1)
        squared = smallest.add_((x[block] * x[block]).sum(dim=1)).clamp_(min=0)
        distance[block] = squared.sqrt_()
    return index, distance


def _relabel_by_size(labels: torch.Tensor, min_size: int) -> torch.Tensor:
    """Return (N,) int64 labels renumbered 1..K by decreasing size; clusters < min_size → 0.

    labels: (N,) int64, values <= 0 mean no cluster.
    """
    ids, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    counts[ids <= 0] = 0
    order = torch.argsort(counts, descending=True, stable=True)
    big = counts[order] >= max(min_size, 1)
    new_id = torch.zeros_like(ids)
    new_id[order[big]] = torch.arange(1, int(big.sum()) + 1, device=labels.device)
    return new_id[inverse]


def _split_components(image: npt.NDArray[np.uint32], min_size: int) -> npt.NDArray[np.uint32]:
    """Return the (Z, Y, X) uint32 image with each 26-connected piece of a label its own id.

    image: (Z, Y, X) uint32 labels, 0 = background. Pieces under ``min_size`` voxels become 0.
    """
    pieces = label_components(image, background=0, connectivity=3)
    small = np.bincount(pieces.ravel()) < max(min_size, 1)
    small[0] = True
    new_id = np.cumsum(~small).astype(np.uint32)
    new_id[small] = 0
    return new_id[pieces]
