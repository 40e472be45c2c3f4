"""Whole-volume instances from blockwise clustering, stitched across block borders.

One embedding space holds only so many well-separated clusters, and the discriminative loss
only separates neurons that meet inside one training patch: mean shift over a whole
FlyLight volume collapses look-alike neurons that lie far apart. Here the volume is cut into
blocks (large enough for neurons to meet inside), each block is clustered with a margin of
context on every side, and instances are joined across block borders where two blocks agree:

1. every block's *outer* box (its core plus ``margin``, clipped to the volume) is clustered on
   its own (:func:`activeseg.core.cluster.mean_shift`; an ensemble's in each member's
   embedding space, the members' labels fused by vote); parts of a cluster in foreground pieces
   apart from its core part are dropped (:func:`anchored`: a look-alike of a neighbour's core,
   clustered with a neuron of this one, must not join them); the labels get ids unique
   over the volume and are kept in a :class:`LabelStore` (on disk for large volumes);
2. blocks whose outer boxes intersect share a region of margin voxels that both clustered;
   label pairs ``(a, b)`` sharing at least ``min_shared`` voxels there, and at least
   ``agreement`` of the smaller of the two (within that region), are joined (union-find);
3. every block's core is written with the ids of its joined instances, renumbered 1..K;
   instances under ``min_size`` voxels in all become background.

A neuron cut by a border is one instance (both blocks cluster the same voxels of the shared
margin); look-alikes in different blocks, never sharing margin voxels, stay apart. A volume
that fits one block is clustered exactly as :func:`activeseg.core.cluster.segment_consensus`
does. Memory holds one block's maps and labels at a time, whatever the volume's size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import zarr
from skimage.measure import label as label_components

from activeseg.config import Triple
from activeseg.core.cluster import Kernel, fuse_segmentations, mean_shift
from activeseg.errors import InputError

logger = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]
LabelImage = npt.NDArray[np.uint32]
R = TypeVar("R")
# map_blocks(function, block keys): function(key) for every key, in key order (see
# segment_blockwise); workflows.distributed.task_map's maps are such.
BlockMap = Callable[[Callable[[int], Any], Sequence[int]], Iterator[Any]]

# Blocks of this core size hold whole stretches of several neurons (a FlyLight volume of
# 400 x 700 x 700 is about 7 x 3 x 3 blocks); a demo volume (32 x 128 x 128) is one block.
DEFAULT_BLOCK: Triple = (64, 256, 256)
# Context clustered around each core; blocks share twice this across a border.
DEFAULT_MARGIN: Triple = (8, 32, 32)
# Two labels are one instance when they share this fraction of the smaller one's voxels in
# the shared margin, and at least MIN_SHARED voxels.
AGREEMENT = 0.5
MIN_SHARED = 10


@dataclass(frozen=True)
class Block:
    """One block of a volume: its grid index, its core box and its outer (clustered) box."""

    index: Triple
    core: Box
    outer: Box

    def local(self, box: Box) -> Box:
        """Return box (volume coordinates, inside the outer box) relative to the outer box."""
        z, y, x = (
            slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, self.outer, strict=True)
        )
        return z, y, x


def plan_blocks(shape: Triple, block: Triple, margin: Triple) -> list[Block]:
    """Return the blocks of a (Z, Y, X) volume: cores on a grid of size block, outer boxes
    grown by margin; both clipped to the volume."""
    if min(block) < 1 or min(margin) < 0:
        raise InputError(f"blocks need sizes >= 1 and margins >= 0, got {block} and {margin}")
    counts = [-(-n // b) for n, b in zip(shape, block, strict=True)]
    blocks = []
    for index in product(*(range(c) for c in counts)):
        starts = [i * b for i, b in zip(index, block, strict=True)]
        core = _clipped(starts, [s + b for s, b in zip(starts, block, strict=True)], shape)
        outer = _clipped(
            [s - m for s, m in zip(starts, margin, strict=True)],
            [s + b + m for s, b, m in zip(starts, block, margin, strict=True)],
            shape,
        )
        blocks.append(Block((index[0], index[1], index[2]), core, outer))
    return blocks


def _clipped(start: list[int], stop: list[int], shape: Triple) -> Box:
    z, y, x = (slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, shape, strict=True))
    return z, y, x


def _intersection(a: Box, b: Box) -> Box | None:
    """Return the intersection of two boxes, or None when they do not meet."""
    z, y, x = (slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b, strict=True))
    return None if any(s.stop <= s.start for s in (z, y, x)) else (z, y, x)


class MeanMaps(Protocol):
    """The maps clustered into instances, read box by box: a mean foreground and the mean
    embedding of each of ``spaces`` embedding spaces (one per independently trained member)."""

    @property
    def shape(self) -> Triple:
        """Return the (Z, Y, X) shape of the volume."""
        ...

    @property
    def spaces(self) -> int:
        """Return K, the number of embedding spaces whose clusterings are fused."""
        ...

    def foreground(self, box: Box) -> npt.NDArray[np.float32]:
        """Return the (z, y, x) float32 mean foreground probability inside box."""
        ...

    def points(
        self, box: Box, mask: npt.NDArray[np.bool_], space: int = 0
    ) -> npt.NDArray[np.float32]:
        """Return the (N, E) float32 embeddings, in embedding space ``space`` (0..K-1), of the
        voxels of box where mask is True."""
        ...


@dataclass(frozen=True)
class ArrayMaps:
    """Mean maps held in arrays (numpy or zarr): foreground (Z, Y, X), embedding (E, Z, Y, X),
    or (K, E, Z, Y, X) with one mean embedding per member's space (K = ``spaces``).

    Embeddings are read one channel at a time, so a block costs one channel of memory.
    """

    foreground_array: Any
    embedding_array: Any

    @property
    def shape(self) -> Triple:
        """Return the (Z, Y, X) shape."""
        z, y, x = (int(n) for n in self.foreground_array.shape)
        return z, y, x

    @property
    def spaces(self) -> int:
        """Return K: the length of the embedding's member axis, 1 without one."""
        return int(self.embedding_array.shape[0]) if self.embedding_array.ndim == 5 else 1

    def foreground(self, box: Box) -> npt.NDArray[np.float32]:
        """Return the foreground inside box as float32."""
        return np.asarray(self.foreground_array[box], dtype=np.float32)

    def points(
        self, box: Box, mask: npt.NDArray[np.bool_], space: int = 0
    ) -> npt.NDArray[np.float32]:
        """Return the embeddings (of member space's) of the masked voxels of box, (N, E)."""
        member = (space,) if self.embedding_array.ndim == 5 else ()
        channels = [
            np.asarray(self.embedding_array[(*member, e, *box)], dtype=np.float32)[mask]
            for e in range(int(self.embedding_array.shape[-4]))
        ]
        return np.ascontiguousarray(np.stack(channels, axis=1))


@dataclass(frozen=True)
class SampleMaps:
    """Mean maps of per-sample arrays: foreground (S, Z, Y, X), embedding (S, E, Z, Y, X).

    The samples come in ``spaces`` equal consecutive groups, one per embedding space (as in
    :func:`activeseg.core.cluster.segment_consensus`): the foreground is the mean over all
    samples, the embedding of space k the mean over group k. The means are those numpy's
    ``mean`` gives, summed one sample at a time.
    """

    foreground_array: Any
    embedding_array: Any
    spaces: int = 1

    def __post_init__(self) -> None:
        samples = int(self.embedding_array.shape[0])
        if self.spaces < 1 or samples % self.spaces:
            raise InputError(f"{samples} samples do not split into {self.spaces} embedding spaces")

    @property
    def shape(self) -> Triple:
        """Return the (Z, Y, X) shape."""
        z, y, x = (int(n) for n in self.foreground_array.shape[1:])
        return z, y, x

    def foreground(self, box: Box) -> npt.NDArray[np.float32]:
        """Return the sample mean of the foreground inside box."""
        samples = range(int(self.foreground_array.shape[0]))
        return _sample_mean(self.foreground_array, (), box, samples)

    def points(
        self, box: Box, mask: npt.NDArray[np.bool_], space: int = 0
    ) -> npt.NDArray[np.float32]:
        """Return the mean embeddings of space's group of samples at the masked voxels."""
        group = int(self.embedding_array.shape[0]) // self.spaces
        samples = range(space * group, (space + 1) * group)
        channels = [
            _sample_mean(self.embedding_array, (e,), box, samples)[mask]
            for e in range(int(self.embedding_array.shape[1]))
        ]
        return np.ascontiguousarray(np.stack(channels, axis=1))


def _sample_mean(
    array: Any, lead: tuple[int, ...], box: Box, samples: range
) -> npt.NDArray[np.float32]:
    """Return the float32 mean of array[s, *lead, *box] over s in samples, summed and divided
    as numpy's ``mean`` over a sample axis does (so the result is the same to the bit)."""
    total = np.asarray(array[(samples[0], *lead, *box)], dtype=np.float32)
    for s in samples[1:]:
        total += np.asarray(array[(s, *lead, *box)], dtype=np.float32)
    return np.true_divide(total, np.intp(len(samples)), out=total, casting="unsafe")


class LabelStore(Protocol):
    """Where each block's outer labels wait between clustering and stitching."""

    def put(self, key: int, labels: LabelImage) -> None:
        """Keep the labels of block number key."""
        ...

    def get(self, key: int, box: Box) -> LabelImage:
        """Return the part box (relative to the block's outer box) of block key's labels."""
        ...


class MemoryStore:
    """A LabelStore in memory: for volumes that fit it, and for tests."""

    def __init__(self) -> None:
        self._labels: dict[int, LabelImage] = {}

    def put(self, key: int, labels: LabelImage) -> None:
        """Keep the labels of block number key."""
        self._labels[key] = labels

    def get(self, key: int, box: Box) -> LabelImage:
        """Return part of block key's labels."""
        return self._labels[key][box]


class ZarrStore:
    """A LabelStore on disk: one compressed zarr array per block, under a new group at path."""

    def __init__(self, path: Path) -> None:
        self._group = zarr.open_group(str(path), mode="w")

    def put(self, key: int, labels: LabelImage) -> None:
        """Write the labels of block number key."""
        self._group.create_array(str(key), data=labels, chunks=labels.shape or (1,))

    def get(self, key: int, box: Box) -> LabelImage:
        """Read part of block key's labels."""
        array = self._group[str(key)]
        assert isinstance(array, zarr.Array)
        return np.asarray(array[box], dtype=np.uint32)


@dataclass(frozen=True)
class ClusterOptions:
    """Mean-shift settings of :func:`activeseg.core.cluster.segment`."""

    threshold: float
    bandwidth: float
    min_size: int
    max_seeds: int = 2000
    kernel: Kernel = "flat"
    merge_fraction: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class StitchOptions:
    """How a volume is cut into blocks and how instances are joined across their borders."""

    block: Triple = DEFAULT_BLOCK
    margin: Triple = DEFAULT_MARGIN
    agreement: float = AGREEMENT
    min_shared: int = MIN_SHARED


def segment_blockwise(
    maps: MeanMaps,
    write: Callable[[Box, LabelImage], None],
    cluster: ClusterOptions,
    stitch: StitchOptions | None = None,
    *,
    store: LabelStore | None = None,
    device: str | torch.device = "cpu",
    map_blocks: BlockMap | None = None,
) -> int:
    """Return the number of instances written: cluster maps block by block and stitch them.

    write(core box, labels) receives every block's core once, labels uint32 with ids 1..K
    unique over the volume (0 = background). store keeps the blocks' labels in between
    (default: in memory; pass a :class:`ZarrStore` for large volumes). ``map_blocks(function,
    keys)`` yields function(key) for every block key, in key order: by default here, one
    block after another; a Dask cluster's map (workflows.distributed.task_map) clusters the
    blocks on its workers, each on its own, into a store they share (a ZarrStore on storage
    every worker sees). Either way the instances are the same.
    """
    stitch = stitch or StitchOptions()
    blocks = plan_blocks(maps.shape, stitch.block, stitch.margin)
    local = store if store is not None else MemoryStore()
    cluster_one = partial(_cluster_into, maps, blocks, local, cluster, device)
    cores = list((map_blocks or _one_by_one)(cluster_one, range(len(blocks))))
    offsets = np.concatenate([[0], np.cumsum([len(core) - 1 for core in cores])]).astype(np.int64)
    sizes = np.zeros(int(offsets[-1]) + 1, np.int64)
    for key, core in enumerate(cores):
        sizes[int(offsets[key]) + 1 : int(offsets[key + 1]) + 1] = core[1:]
    labelled = _Offset(local, offsets)
    joined = _UnionFind(int(offsets[-1]) + 1)
    for first, second in _neighbour_pairs(blocks):
        for a, b in _agreeing_pairs(first, second, labelled, stitch):
            joined.union(int(a), int(b))
    final = joined.renumber(sizes, cluster.min_size)
    for key, block in enumerate(blocks):
        write(block.core, final[labelled.get(key, block.local(block.core))])
    count = int(final.max(initial=0))
    logger.info("blockwise clustering: %d blocks, %d instances", len(blocks), count)
    return count


def _one_by_one(function: Callable[[int], R], keys: Sequence[int]) -> Iterator[R]:
    return (function(key) for key in keys)


def segment_volume(
    foreground: npt.ArrayLike,
    embedding: npt.ArrayLike,
    cluster: ClusterOptions,
    stitch: StitchOptions | None = None,
) -> LabelImage:
    """Return the (Z, Y, X) uint32 stitched instances of in-memory mean maps.

    foreground: (Z, Y, X) float; embedding: (E, Z, Y, X) float. For tests and small volumes.
    """
    fg, emb = np.asarray(foreground), np.asarray(embedding)
    if fg.ndim != 3 or emb.ndim != 4 or emb.shape[1:] != fg.shape:
        raise InputError(
            f"blockwise clustering needs foreground (Z, Y, X) and embedding (E, Z, Y, X) of "
            f"one volume, got {fg.shape} and {emb.shape}"
        )
    out = np.zeros(fg.shape, np.uint32)

    def write(box: Box, labels: LabelImage) -> None:
        out[box] = labels

    segment_blockwise(ArrayMaps(fg, emb), write, cluster, stitch)
    return out


def cluster_block(
    maps: MeanMaps, box: Box, cluster: ClusterOptions, device: str | torch.device = "cpu"
) -> LabelImage:
    """Return the (z, y, x) uint32 instances of one box clustered on its own: ids 1..K by
    decreasing size, as :func:`activeseg.core.cluster.segment_consensus` labels a volume.

    With several embedding spaces the mean foreground is clustered in each one and the
    members' labels are fused by vote (:func:`activeseg.core.cluster.fuse_segmentations`).
    Embeddings are read one channel at a time; the members' labels, one per foreground voxel
    of the box, are fused over those voxels only (background votes for no instance, so the
    result is the same) to keep the fusion's memory that of the foreground.
    """
    mask = maps.foreground(box) > cluster.threshold
    labels = np.zeros(mask.shape, np.uint32)
    if not mask.any():
        return labels
    members = [_cluster_space(maps, box, mask, k, cluster, device) for k in range(maps.spaces)]
    if len(members) == 1:
        labels[mask] = members[0]
    else:
        stacked = np.stack(members)[:, None, None, :]  # (K, 1, 1, N): a volume of N voxels
        labels[mask] = fuse_segmentations(stacked, min_size=cluster.min_size)[0, 0]
    return labels


def _cluster_space(
    maps: MeanMaps,
    box: Box,
    mask: npt.NDArray[np.bool_],
    space: int,
    cluster: ClusterOptions,
    device: str | torch.device,
) -> npt.NDArray[np.uint32]:
    """Return the (N,) uint32 mean-shift labels of box's N masked voxels in one space."""
    points = torch.from_numpy(maps.points(box, mask, space)).to(device)
    found = mean_shift(
        points,
        cluster.bandwidth,
        kernel=cluster.kernel,
        max_seeds=cluster.max_seeds,
        min_size=cluster.min_size,
        merge_fraction=cluster.merge_fraction,
        seed=cluster.seed,
    )
    return found.cpu().numpy().astype(np.uint32)


def anchored(labels: LabelImage, core: Box) -> LabelImage:
    """Return labels (of an outer box) keeping, of every label, only the voxels in foreground
    pieces (26-connected components of labels > 0) where that label reaches the core (a box of
    labels); the rest becomes 0. Ids are kept; voxels of the core never change.

    A cluster of a block may hold, besides its neuron, look-alikes that lie in the block's
    margin apart from it: they belong to a neighbour's core, and must not join the two in
    stitching. A neuron crossing the border, or continuing past another neuron that covers it
    where they cross, lies in one foreground piece with its core part and stays.
    """
    if all(c.start == 0 and c.stop == n for c, n in zip(core, labels.shape, strict=True)):
        return labels
    pieces = label_components(labels > 0, background=0, connectivity=3).astype(np.int64)
    scale = int(labels.max(initial=0)) + 1
    keys = pieces * scale + labels
    reaching = np.unique(keys[core])
    return np.where(np.isin(keys, reaching), labels, 0).astype(np.uint32)


def _cluster_into(
    maps: MeanMaps,
    blocks: list[Block],
    store: LabelStore,
    cluster: ClusterOptions,
    device: str | torch.device,
    key: int,
) -> npt.NDArray[np.int64]:
    """Cluster block key, keep its labels (ids 1..n of its own) in store; return the number of
    core voxels of each id (index 0: background), n + 1 entries."""
    block = blocks[key]
    labels = anchored(cluster_block(maps, block.outer, cluster, device), block.local(block.core))
    store.put(key, labels)
    core = labels[block.local(block.core)].ravel()
    return np.bincount(core, minlength=int(labels.max(initial=0)) + 1).astype(np.int64)


@dataclass(frozen=True)
class _Offset:
    """The blocks' labels of a store with ids made unique over the volume: block key's ids
    1..n become offsets[key] + 1..n."""

    store: LabelStore
    offsets: npt.NDArray[np.int64]

    def get(self, key: int, box: Box) -> LabelImage:
        """Return part of block key's labels, ids offset."""
        labels = self.store.get(key, box)
        return np.where(labels > 0, labels + np.uint32(self.offsets[key]), 0).astype(np.uint32)


def _neighbour_pairs(blocks: list[Block]) -> Iterator[tuple[tuple[int, Block], tuple[int, Block]]]:
    """Yield ((key, block), (key, block)) for every two blocks whose outer boxes meet."""
    keys = {block.index: key for key, block in enumerate(blocks)}
    for key, block in enumerate(blocks):
        for step in product((-1, 0, 1), repeat=3):
            other = tuple(i + s for i, s in zip(block.index, step, strict=True))
            if other in keys and keys[other] > key:
                yield (key, block), (keys[other], blocks[keys[other]])


def _agreeing_pairs(
    first: tuple[int, Block], second: tuple[int, Block], store: _Offset, stitch: StitchOptions
) -> npt.NDArray[np.int64]:
    """Return (P, 2) id pairs of two blocks that agree in the region both clustered."""
    (key_a, block_a), (key_b, block_b) = first, second
    shared = _intersection(block_a.outer, block_b.outer)
    if shared is None:
        return np.zeros((0, 2), np.int64)
    a = store.get(key_a, block_a.local(shared)).ravel()
    b = store.get(key_b, block_b.local(shared)).ravel()
    return agreeing_labels(a, b, stitch.agreement, stitch.min_shared)


def agreeing_labels(
    a: npt.NDArray[np.integer], b: npt.NDArray[np.integer], agreement: float, min_shared: int
) -> npt.NDArray[np.int64]:
    """Return (P, 2) pairs of ids (of a, of b) that label one region alike.

    a, b: two labelings (0 = background) of the same voxels. A pair agrees when it shares at
    least min_shared voxels and at least ``agreement`` of the smaller one's voxels here.
    """
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pairs, shared = np.unique(
        np.stack([a[both], b[both]], axis=1).astype(np.int64), axis=0, return_counts=True
    )
    ids_a, count_a = np.unique(a[a > 0], return_counts=True)
    ids_b, count_b = np.unique(b[b > 0], return_counts=True)
    size_a = count_a[np.searchsorted(ids_a, pairs[:, 0])]
    size_b = count_b[np.searchsorted(ids_b, pairs[:, 1])]
    agree = (shared >= min_shared) & (shared >= agreement * np.minimum(size_a, size_b))
    return pairs[agree]


class _UnionFind:
    """Disjoint sets of the ids 0..n-1 (0, background, is never joined)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, item: int) -> int:
        """Return the representative of item's set (the smallest id in it)."""
        root = item
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, int(self.parent[item])
        return root

    def union(self, a: int, b: int) -> None:
        """Join the sets of a and b; the smaller representative represents both."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def renumber(self, sizes: npt.NDArray[np.int64], min_size: int) -> npt.NDArray[np.uint32]:
        """Return a lookup from every id to its set's final id: sets ordered by their smallest
        id get 1..K; sets of fewer than min_size voxels in all (sizes per id) get 0."""
        roots = np.array([self.find(i) for i in range(len(self.parent))], np.int64)
        totals = np.bincount(roots, weights=sizes, minlength=len(roots))
        keep = (roots == np.arange(len(roots))) & (totals >= max(min_size, 1))
        keep[0] = False
        number = np.cumsum(keep).astype(np.uint32)
        number[~keep] = 0
        return number[roots]
