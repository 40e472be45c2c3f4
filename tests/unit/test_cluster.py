"""Tests of activeseg.core.cluster: mean shift recovers known clusters; volumes become instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from activeseg.core import cluster
from activeseg.core.cluster import mean_shift, segment, segment_consensus, segment_samples
from activeseg.errors import InputError


def blobs(
    sizes: list[int], dims: int = 8, spread: float = 0.15, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Return (N, dims) float32 points in Gaussian clusters with centres >= 3 apart, and truth."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(max(dims, len(sizes)))[: len(sizes), :dims]
    centres += rng.normal(0, 0.2, centres.shape)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[truth] + rng.normal(0, spread, (len(truth), dims))
    return torch.from_numpy(points.astype(np.float32)), truth


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
def test_recovers_gaussian_clusters(kernel: str) -> None:
    points, truth = blobs([400, 250, 120, 60, 30])
    labels = mean_shift(points, bandwidth=0.75, kernel=kernel)  # type: ignore[arg-type]
    assert labels.dtype == torch.int64 and labels.shape == (len(truth),)
    assert adjusted_rand_score(truth, labels.numpy()) >= 0.98


def test_labels_are_numbered_by_decreasing_size() -> None:
    points, _ = blobs([30, 300, 100])
    labels = mean_shift(points, bandwidth=0.75).numpy()
    sizes = np.bincount(labels)[1:]
    assert sizes.tolist() == [300, 100, 30]


def test_small_clusters_become_background() -> None:
    points, truth = blobs([300, 200, 15])
    labels = mean_shift(points, bandwidth=0.75, min_size=20).numpy()
    assert (labels[truth == 2] == 0).all()
    assert set(np.unique(labels[truth < 2])) == {1, 2}


def test_capped_seeds_still_find_every_cluster() -> None:
    points, truth = blobs([500, 400, 300, 200, 100, 50, 40, 30], dims=10)
    labels = mean_shift(points, bandwidth=0.75, max_seeds=3)  # 8 clusters: >= 3 rounds
    assert adjusted_rand_score(truth, labels.numpy()) >= 0.98


def test_bin_seeds_take_the_fullest_cells_first() -> None:
    cells = [[0.1, 0.1], [5.2, 0.3], [0.4, 0.2], [9.1, 9.1], [5.5, 0.6], [0.7, 0.9]]
    points = torch.tensor(cells)  # cell (0, 0) holds 3 points, (5, 0) 2, (9, 9) 1
    keys = cluster._cell_keys(points, 1.0)
    seeds, seeded = cluster._bin_seeds(points, keys, count=2)
    assert torch.equal(seeds, points[[0, 1]])  # the first point of each cell
    assert seeded.tolist() == [int(keys[0]), int(keys[1])]
    all_seeds, _ = cluster._bin_seeds(points, keys, count=10)
    assert torch.equal(all_seeds, points[[0, 1, 3]])


@pytest.mark.parametrize(("kernel", "bandwidth"), [("flat", 0.75), ("gaussian", 0.4)])
def test_more_clusters_than_first_round_seeds_are_all_found(kernel: str, bandwidth: float) -> None:
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(5) * 3.0] * 3), axis=-1).reshape(-1, 3)[:100]
    centres = np.concatenate([grid, np.zeros((100, 5))], axis=1)  # 100 clusters in 8-D
    truth = np.repeat(np.arange(100), 40)
    points = centres[truth] + rng.normal(0, 0.1, (len(truth), 8))
    # a Gaussian mode explains points within two sigmas (0.8): the clusters, 3 apart, are not
    labels = mean_shift(
        torch.from_numpy(points.astype(np.float32)),
        bandwidth=bandwidth,
        kernel=kernel,  # type: ignore[arg-type]
    )
    assert len(np.unique(labels.numpy())) == 100
    assert adjusted_rand_score(truth, labels.numpy()) == 1.0


def test_isolated_point_gets_its_own_cluster() -> None:
    points, truth = blobs([300, 200])
    outlier = torch.full((1, 8), 10.0)
    labels = mean_shift(torch.cat([points, outlier]), bandwidth=0.75).numpy()
    assert labels[-1] == 3 and (labels[:-1] < 3).all()
    assert adjusted_rand_score(truth, labels[:-1]) == 1.0


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
def test_small_blocks_give_the_same_labels(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    points, _ = blobs([300, 200, 100, 40], dims=5, spread=0.25)
    whole = mean_shift(points, bandwidth=0.75, kernel=kernel)  # type: ignore[arg-type]
    monkeypatch.setattr(cluster, "_BLOCK_ENTRIES", 97)  # ragged blocks of a few rows
    chunked = mean_shift(points, bandwidth=0.75, kernel=kernel)  # type: ignore[arg-type]
    assert torch.equal(whole, chunked)


def test_density_subsample_keeps_the_clusters() -> None:
    points, truth = blobs([3000, 2000, 500], seed=4)
    labels = mean_shift(points, bandwidth=0.75, max_points=500)
    assert adjusted_rand_score(truth, labels.numpy()) >= 0.98


def test_same_seed_same_labels() -> None:
    points, _ = blobs([200, 100, 50], dims=16)
    first = mean_shift(points, bandwidth=0.75, max_seeds=10, seed=3)
    assert torch.equal(first, mean_shift(points, bandwidth=0.75, max_seeds=10, seed=3))


def test_empty_and_single_point_and_single_cluster() -> None:
    assert mean_shift(torch.zeros((0, 4)), bandwidth=1.0).shape == (0,)
    assert mean_shift(torch.ones((1, 4)), bandwidth=1.0).tolist() == [1]
    points, _ = blobs([100])
    assert (mean_shift(points, bandwidth=0.75) == 1).all()


def test_float64_points_work() -> None:
    points, truth = blobs([100, 100])
    labels = mean_shift(points.double(), bandwidth=0.75)
    assert adjusted_rand_score(truth, labels.numpy()) == 1.0


def test_bad_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"\(N, E\)"):
        mean_shift(torch.zeros(5), bandwidth=1.0)
    with pytest.raises(InputError, match="bandwidth"):
        mean_shift(torch.zeros((5, 2)), bandwidth=0.0)
    with pytest.raises(InputError, match="float"):
        mean_shift(torch.zeros((5, 2), dtype=torch.int64), bandwidth=1.0)


def two_neuron_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return foreground (Z, Y, X), embeddings (3, Z, Y, X) and the truth of two rods."""
    truth = np.zeros((4, 12, 12), np.uint32)
    truth[1:3, 2, 1:11] = 1
    truth[1:3, 8, 1:11] = 2
    foreground = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    centres = np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0]], np.float32)
    rng = np.random.default_rng(0)
    embeddings = centres[truth].transpose(3, 0, 1, 2) + rng.normal(0, 0.05, (3, *truth.shape))
    return foreground, embeddings.astype(np.float32), truth


def test_segment_finds_the_instances() -> None:
    foreground, embeddings, truth = two_neuron_volume()
    labels = segment(foreground, embeddings, threshold=0.5, bandwidth=1.0, min_size=5)
    assert labels.dtype == np.uint32 and labels.shape == truth.shape
    assert (labels[truth == 0] == 0).all()
    assert adjusted_rand_score(truth[truth > 0], labels[truth > 0]) == 1.0


def test_segment_without_foreground_is_empty() -> None:
    foreground, embeddings, _ = two_neuron_volume()
    labels = segment(foreground * 0, embeddings, threshold=0.5, bandwidth=1.0, min_size=5)
    assert labels.dtype == np.uint32 and not labels.any()


def test_split_disconnected_separates_pieces() -> None:
    foreground, embeddings, truth = two_neuron_volume()
    embeddings[:, truth == 2] = embeddings[:, truth == 1][:, :1]  # both rods look alike
    joined = segment(foreground, embeddings, threshold=0.5, bandwidth=1.0, min_size=5)
    assert len(np.unique(joined[truth > 0])) == 1
    split = segment(
        foreground, embeddings, threshold=0.5, bandwidth=1.0, min_size=5, split_disconnected=True
    )
    assert adjusted_rand_score(truth[truth > 0], split[truth > 0]) == 1.0
    assert set(np.unique(split)) == {0, 1, 2}


def test_segment_rejects_mismatched_shapes() -> None:
    foreground, embeddings, _ = two_neuron_volume()
    with pytest.raises(InputError, match="same volume"):
        segment(foreground[:2], embeddings, threshold=0.5, bandwidth=1.0, min_size=0)


def test_samples_and_consensus() -> None:
    foreground, embeddings, truth = two_neuron_volume()
    fg = np.stack([foreground, foreground])
    emb = np.stack([embeddings, embeddings + 0.01])
    fg[1, truth == 2] = 0.0  # the second sample misses neuron 2
    per_sample = segment_samples(fg, emb, threshold=0.5, bandwidth=1.0, min_size=5)
    assert per_sample.shape == (2, *truth.shape) and per_sample.dtype == np.uint32
    assert per_sample[0].max() == 2 and per_sample[1].max() == 1
    consensus = segment_consensus(fg, emb, threshold=0.3, bandwidth=1.0, min_size=5)
    assert adjusted_rand_score(truth[truth > 0], consensus[truth > 0]) == 1.0
    with pytest.raises(InputError, match="samples"):
        segment_samples(foreground, embeddings, threshold=0.5, bandwidth=1.0, min_size=5)


def test_consensus_of_unaligned_embedding_spaces_is_clustered_member_by_member() -> None:
    # Two ensemble members embed the same two halves at swapped places: their mean puts
    # every voxel at one point, each member alone keeps the halves apart.
    foreground = np.ones((2, 2, 4, 8), np.float32)
    first = np.zeros((2, 2, 4, 8), np.float32)
    first[0, :, :, 4:] = 3.0
    second = np.zeros((2, 2, 4, 8), np.float32)
    second[0, :, :, :4] = 3.0
    embeddings = np.stack([first, second])
    options = {"threshold": 0.5, "bandwidth": 1.0, "min_size": 1}
    merged = segment_consensus(foreground, embeddings, **options)
    kept = segment_consensus(foreground, embeddings, shared_space=False, **options)
    assert len(np.unique(merged)) == 1
    assert len(np.unique(kept)) == 2
    assert len(np.unique(kept[:, :, :4])) == len(np.unique(kept[:, :, 4:])) == 1


def rotated_members(members: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return foreground (K, Z, Y, X), embeddings (K, E, Z, Y, X) and truth: the K members'
    embeddings of one three-neuron volume are random rotations of each other."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((4, 12, 12), np.int64)
    truth[:, 1:4, :], truth[:, 5:8, :], truth[:, 9:12, :6] = 1, 2, 3
    centres = 3.0 * np.eye(4)[:, :4]  # background at 0, neurons on the axes
    base = centres[truth] + rng.normal(0, 0.1, (*truth.shape, 4))  # (Z, Y, X, E)
    foreground = np.stack([(truth > 0).astype(np.float32)] * members)
    embeddings = []
    for _ in range(members):
        rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
        embeddings.append(np.moveaxis(base @ rotation, -1, 0))
    return foreground, np.stack(embeddings).astype(np.float32), truth


def test_members_whose_embeddings_are_rotations_of_each_other_agree() -> None:
    foreground, embeddings, truth = rotated_members(4)
    options = {"threshold": 0.5, "bandwidth": 0.75, "min_size": 3}
    fused = segment_consensus(foreground, embeddings, spaces=4, **options)
    assert adjusted_rand_score(truth.ravel(), fused.ravel()) == 1.0
    assert fused.dtype == np.uint32


def test_fusion_follows_the_majority_not_the_first_member() -> None:
    _, _, truth = rotated_members(1)
    wrong = np.where(truth == 2, 1, truth)  # the first member merges neurons 1 and 2
    right = [np.where(truth > 0, truth * 7 + k, 0) for k in range(3)]  # others: any ids
    fused = cluster.fuse_segmentations(np.stack([wrong, *right]))
    assert adjusted_rand_score(truth.ravel(), fused.ravel()) == 1.0
    assert fused.dtype == np.uint32 and sorted(np.unique(fused)) == [0, 1, 2, 3]


def test_fusion_keeps_an_instance_most_members_found_and_drops_small_ones() -> None:
    _, _, truth = rotated_members(1)
    missing = np.where(truth == 3, 0, truth)
    fused = cluster.fuse_segmentations(np.stack([missing, truth, truth]))
    assert adjusted_rand_score(truth.ravel(), fused.ravel()) == 1.0
    empty = cluster.fuse_segmentations(np.zeros((3, *truth.shape), np.uint32))
    assert empty.shape == truth.shape and not empty.any()
    small = cluster.fuse_segmentations(np.stack([truth, truth]), min_size=100)
    assert len(np.unique(small)) == 3  # neuron 3 (72 voxels) is dropped, 1 and 2 (144) kept
    with pytest.raises(InputError, match="embedding spaces"):
        segment_consensus(np.ones((3, 2, 2, 2)), np.ones((3, 2, 2, 2, 2)), spaces=2,
                          threshold=0.5, bandwidth=1.0, min_size=1)  # fmt: skip
