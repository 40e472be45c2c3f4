"""The simulated annotator's labels and its correction-effort cost model."""

from __future__ import annotations

import numpy as np

from activeseg.core.instances import Instances
from activeseg.workflows.annotators import AnnotatorNoise, correction_effort, sparse_labels


def truth() -> Instances:
    labels = np.zeros((6, 8, 8), np.uint32)
    labels[:, 1:3, :] = 1
    labels[:, 5:7, 2:6] = 2
    labels[:, 0, 0] = 3  # one voxel per slice
    # Voxel (z, 1, 4) of neuron 1 also belongs to neuron 2 on every slice.
    overlaps = np.array([[z, 1, 4, 2] for z in range(6)], np.int64)
    return Instances(labels, overlaps)


def test_sparse_labels_keep_the_truth_on_shown_slices_only() -> None:
    labels = sparse_labels(truth(), [1, 4])
    assert np.array_equal(labels.labels[[1, 4]], truth().labels[[1, 4]])
    assert not labels.labels[[0, 2, 3, 5]].any()
    assert labels.mask.any(axis=(1, 2)).tolist() == [False, True, False, False, True, False]
    assert labels.overlaps[:, 0].tolist() == [1, 4]


def test_noisy_annotator_misses_small_fragments() -> None:
    labels = sparse_labels(truth(), [2], AnnotatorNoise(drop_below=2))
    assert set(np.unique(labels.labels[2]).tolist()) == {0, 1, 2}


def test_correction_effort_counts_voxels_to_repaint() -> None:
    shown = truth().labels[[0, 3]]
    renumbered = np.where(shown > 0, shown + 10, 0).astype(np.uint32)
    assert correction_effort(renumbered, shown) == 0  # same neurons, other ids: nothing to fix
    assert correction_effort(np.zeros_like(shown), shown) == int((shown > 0).sum())
    merged = np.where(shown > 0, 1, 0).astype(np.uint32)  # all neurons merged into one
    assert correction_effort(merged, shown) == int(((shown > 0) & (shown != 1)).sum())


def test_overlaps_on_the_shown_slices_follow_the_shown_labels() -> None:
    from activeseg.workflows.annotators import shown_overlaps

    rows = np.array([[4, 1, 2, 9], [7, 0, 0, 5], [4, 3, 3, 6], [2, 1, 1, 9]])
    # slices 4 and 7 are shown (in that order); crop ids 9 -> 1, 5 -> 2; neuron 6 not shown
    shown = shown_overlaps(rows, [4, 7], {1: 9, 2: 5})
    assert shown.tolist() == [[0, 1, 2, 1], [1, 0, 0, 2]]
    assert shown_overlaps(np.zeros((0, 4), np.int64), [4], {}).shape == (0, 4)
