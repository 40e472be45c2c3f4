"""Blockwise clustering: blocks are clustered apart and stitched where their margins agree."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activeseg.core.cluster import segment, segment_consensus
from activeseg.core.stitching import (
    ArrayMaps,
    Box,
    ClusterOptions,
    MeanMaps,
    SampleMaps,
    StitchOptions,
    ZarrStore,
    agreeing_labels,
    anchored,
    plan_blocks,
    segment_blockwise,
    segment_volume,
)
from activeseg.errors import InputError

OPTIONS = ClusterOptions(threshold=0.5, bandwidth=0.5, min_size=5, kernel="gaussian")
SMALL_BLOCKS = StitchOptions(block=(8, 16, 16), margin=(2, 4, 4))


def oracle_maps(
    truth: np.ndarray, centres: dict[int, np.ndarray], noise: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return foreground (Z, Y, X) and embedding (E, Z, Y, X): each neuron at its centre."""
    rng = np.random.default_rng(seed)
    dims = len(next(iter(centres.values())))
    embedding = rng.normal(0, noise, (dims, *truth.shape)).astype(np.float32)
    for label, centre in centres.items():
        embedding[:, truth == label] += centre[:, None].astype(np.float32)
    return (truth > 0).astype(np.float32), embedding


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Return whether two label images are equal up to renaming the ids (0 stays 0)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b)) and bool(
        np.all((pairs[0] == 0) == (pairs[1] == 0))
    )


def test_blocks_cover_the_volume_once_and_their_outer_boxes_add_the_margin() -> None:
    shape = (10, 40, 33)
    blocks = plan_blocks(shape, (8, 16, 16), (2, 4, 4))
    counts = np.zeros(shape, int)
    for block in blocks:
        counts[block.core] += 1
        for core, outer, n in zip(block.core, block.outer, shape, strict=True):
            assert outer.start <= core.start and outer.stop >= core.stop and outer.stop <= n
    assert np.all(counts == 1)
    middle = next(b for b in blocks if b.index == (0, 1, 1))
    assert middle.outer == (slice(0, 10), slice(12, 36), slice(12, 33))
    with pytest.raises(InputError):
        plan_blocks(shape, (0, 16, 16), (2, 4, 4))


def test_a_neuron_split_by_a_block_border_is_one_instance() -> None:
    truth = np.zeros((8, 16, 32), np.uint32)
    truth[3:5, 6:9, 2:30] = 1  # runs along x across the border at x = 16
    fg, emb = oracle_maps(truth, {1: np.array([1.0, 0.0, 0.0])})
    labels = segment_volume(fg, emb, OPTIONS, StitchOptions(block=(8, 16, 16), margin=(0, 2, 2)))
    assert set(np.unique(labels[truth == 1])) == {1}
    assert np.all(labels[truth == 0] == 0)


def test_far_apart_look_alikes_in_different_blocks_stay_two_instances() -> None:
    truth = np.zeros((8, 16, 64), np.uint32)
    truth[3:5, 6:9, 2:12] = 1
    truth[3:5, 6:9, 50:62] = 2
    same = np.array([1.0, 0.0, 0.0])
    fg, emb = oracle_maps(truth, {1: same, 2: same + 0.01})  # embeddings nearly equal
    one_pass = segment(fg, emb, **_keywords(OPTIONS))
    assert len(np.unique(one_pass[truth > 0])) == 1  # one embedding space merges them
    labels = segment_volume(fg, emb, OPTIONS, StitchOptions(block=(8, 16, 32), margin=(2, 4, 4)))
    assert same_partition(labels, truth)


def test_blockwise_equals_one_pass_on_a_small_volume(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    truth = np.zeros((12, 40, 40), np.uint32)
    for label in range(1, 6):  # five tubes, each crossing several blocks
        z, y = rng.integers(1, 11), rng.integers(2, 38)
        truth[z - 1 : z + 1, y - 1 : y + 1, 3:37] = label
    truth[2:10, 20:22, 20:22] = 6  # a short vertical one crossing a tube
    centres = {k: 3.0 * np.eye(8)[k - 1] for k in range(1, 7)}
    fg, emb = oracle_maps(truth, centres)
    one_pass = segment(fg, emb, **_keywords(OPTIONS))
    stitched = np.zeros(truth.shape, np.uint32)

    def write(box: tuple[slice, slice, slice], labels: np.ndarray) -> None:
        stitched[box] = labels

    count = segment_blockwise(
        ArrayMaps(fg, emb), write, OPTIONS, SMALL_BLOCKS, store=ZarrStore(tmp_path / "s.zarr")
    )
    assert count == len(np.unique(one_pass)) - 1 == 6
    assert same_partition(stitched, one_pass)


def test_a_volume_of_one_block_is_clustered_exactly_as_segment_does() -> None:
    rng = np.random.default_rng(1)
    fg = rng.random((6, 20, 20)).astype(np.float32)
    centres = {k: 2.0 * np.eye(3)[k - 1] for k in (1, 2, 3)}
    _, emb = oracle_maps(rng.integers(1, 4, fg.shape), centres, noise=0.4)
    expected = segment(fg, emb, **_keywords(OPTIONS))
    np.testing.assert_array_equal(segment_volume(fg, emb, OPTIONS), expected)


def test_labels_agree_when_they_share_enough_of_the_smaller_one() -> None:
    a = np.array([1, 1, 1, 1, 2, 2, 0, 0, 3, 3])
    b = np.array([7, 7, 7, 0, 8, 9, 9, 9, 9, 9])
    pairs = agreeing_labels(a, b, agreement=0.5, min_shared=2)
    # 1-7 share 3 of 3; 2-8 and 2-9 only 1 voxel each; 3-9 share 2 of the 2 voxels of 3
    assert pairs.tolist() == [[1, 7], [3, 9]]
    assert agreeing_labels(a, b, agreement=0.5, min_shared=3).tolist() == [[1, 7]]
    assert agreeing_labels(a * 0, b, 0.5, 1).shape == (0, 2)


def member_samples(
    truth: np.ndarray, spaces: list[dict[int, np.ndarray]], draws: int = 1, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Return foreground (S, Z, Y, X) and embeddings (S, E, Z, Y, X) of an ensemble: one group
    of ``draws`` samples per member, each member placing the neurons at its own centres."""
    fg, emb = [], []
    for k, centres in enumerate(spaces):
        for d in range(draws):
            f, e = oracle_maps(truth, centres, noise, seed=k * draws + d)
            fg.append(f - 0.1 * d)
            emb.append(e)
    return np.stack(fg), np.stack(emb)


def blockwise(maps: MeanMaps, stitch: StitchOptions | None = None) -> np.ndarray:
    """Return the stitched instances of maps, gathered in memory."""
    out = np.zeros(maps.shape, np.uint32)

    def write(box: Box, labels: np.ndarray) -> None:
        out[box] = labels

    segment_blockwise(maps, write, OPTIONS, stitch)
    return out


def test_an_ensemble_of_one_block_is_the_fused_consensus_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, (6, 20, 20))
    spaces = [{k: rng.normal(0, 1.5, 4) for k in (1, 2, 3)} for _ in range(3)]
    spaces[0][3] = spaces[0][2]  # member 0 alone merges neurons 2 and 3
    fg, emb = member_samples(truth, spaces, draws=2, noise=0.3)
    fg += rng.normal(0, 0.2, fg.shape).astype(np.float32)
    expected = segment_consensus(fg, emb, spaces=3, **_keywords(OPTIONS))
    np.testing.assert_array_equal(blockwise(SampleMaps(fg, emb, spaces=3)), expected)
    assert expected.max() == 3
    first_member = ArrayMaps(fg.mean(axis=0), emb[:2].mean(axis=0))
    assert blockwise(first_member).max() == 2


def test_members_outvote_the_first_member_that_merges_two_neurons() -> None:
    truth = np.zeros((8, 16, 32), np.uint32)
    truth[1:3, 3:6, 2:30] = 1  # both cross the block border at x = 16
    truth[5:7, 10:13, 2:30] = 2
    merging = {1: np.array([2.0, 0.0, 0.0]), 2: np.array([2.0, 0.0, 0.0])}
    spaces = [merging] + [{1: np.eye(3)[k] * 2, 2: np.eye(3)[k + 1] * -2} for k in (0, 1)]
    fg, emb = member_samples(truth, spaces)
    stitch = StitchOptions(block=(8, 16, 16), margin=(2, 4, 4))
    first_only = blockwise(SampleMaps(fg[:1], emb[:1]), stitch)
    assert len(np.unique(first_only[truth > 0])) == 1  # member 0's space merges them
    fused = blockwise(SampleMaps(fg, emb, spaces=3), stitch)
    assert same_partition(fused, truth)


def test_sample_maps_refuse_samples_that_do_not_split_into_the_spaces() -> None:
    with pytest.raises(InputError, match="3 samples"):
        SampleMaps(np.ones((3, 2, 2, 2)), np.ones((3, 2, 2, 2, 2)), spaces=2)


def test_moments_with_a_member_axis_are_fused_as_their_samples_are() -> None:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 4, (6, 20, 20))
    spaces = [{k: rng.normal(0, 1.5, 4) for k in (1, 2, 3)} for _ in range(3)]
    fg, emb = member_samples(truth, spaces, noise=0.4)
    moments = ArrayMaps(fg.mean(axis=0), emb)  # one sample per member: its mean is itself
    assert moments.spaces == 3
    expected = segment_consensus(fg, emb, spaces=3, **_keywords(OPTIONS))
    np.testing.assert_array_equal(blockwise(moments), expected)


def _keywords(options: ClusterOptions) -> dict[str, object]:
    return {
        "threshold": options.threshold,
        "bandwidth": options.bandwidth,
        "min_size": options.min_size,
        "kernel": options.kernel,
        "max_seeds": options.max_seeds,
    }


def test_a_look_alike_in_a_neighbours_margin_does_not_join_the_two() -> None:
    truth = np.zeros((8, 16, 32), np.uint32)
    truth[3:5, 6:9, 2:10] = 1  # in the first block's core
    truth[3:5, 6:9, 18:30] = 2  # in the second block's core, reaching into the first's margin
    same = np.array([1.0, 0.0, 0.0])
    fg, emb = oracle_maps(truth, {1: same, 2: same})
    labels = segment_volume(fg, emb, OPTIONS, StitchOptions(block=(8, 16, 16), margin=(0, 4, 4)))
    assert same_partition(labels, truth)


def test_anchoring_keeps_of_each_label_the_foreground_pieces_where_it_reaches_the_core() -> None:
    labels = np.zeros((1, 1, 12), np.uint32)
    labels[0, 0, [0, 1, 4, 5, 6, 10, 11]] = [1, 1, 1, 1, 2, 1, 3]
    core = (slice(0, 1), slice(0, 1), slice(3, 8))
    assert anchored(labels, core)[0, 0].tolist() == [0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0]
    crossing = np.array([[[1, 2, 1, 0, 1]]], np.uint32)  # 1 continues past 2, where they cross
    first = (slice(0, 1), slice(0, 1), slice(0, 1))
    assert anchored(crossing, first)[0, 0].tolist() == [1, 0, 1, 0, 0]
    whole = (slice(0, 1), slice(0, 1), slice(0, 12))
    assert anchored(labels, whole) is labels


def _in_other_processes(function: Callable[[int], Any], keys: Sequence[int]) -> Iterator[Any]:
    """A block map that clusters every block in a process of its own, in reverse order."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(function, key) for key in reversed(list(keys))}
        for key in keys:
            yield futures[key].result()


def test_blocks_clustered_in_other_processes_give_the_same_instances(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    truth = np.zeros((12, 40, 40), np.uint32)
    for label in range(1, 5):  # tubes crossing several blocks
        z, y = rng.integers(1, 11), rng.integers(2, 38)
        truth[z - 1 : z + 1, y - 1 : y + 1, 3:37] = label
    fg, emb = oracle_maps(truth, {k: 3.0 * np.eye(8)[k - 1] for k in range(1, 5)})
    results = []
    for name, mapper in (("here", None), ("apart", _in_other_processes)):
        out = np.zeros(truth.shape, np.uint32)

        def write(box: Box, labels: np.ndarray, out: np.ndarray = out) -> None:
            out[box] = labels

        store = ZarrStore(tmp_path / f"{name}.zarr")  # a store the processes share
        count = segment_blockwise(
            ArrayMaps(fg, emb), write, OPTIONS, SMALL_BLOCKS, store=store, map_blocks=mapper
        )
        results.append((count, out))
    assert len(plan_blocks(truth.shape, SMALL_BLOCKS.block, SMALL_BLOCKS.margin)) > 4
    assert results[0][0] == results[1][0] == 4
    assert np.array_equal(results[0][1], results[1][1])  # the same ids, to the voxel
