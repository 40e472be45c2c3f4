"""Annotation cost in the annotator's units: a known repaint gives the known effort."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.core.effort import annotation_effort
from activeseg.core.instances import Instances
from activeseg.workflows.annotators import AnnotatorNoise, sparse_labels, touching_pairs


def shown() -> np.ndarray:
    """Two slices with three neurons: 1 (rows 1-2), 2 (rows 5-6, x 2-5), 3 (rows 1-2, x 8-9)."""
    labels = np.zeros((2, 8, 10), np.uint32)
    labels[:, 1:3, :6] = 1
    labels[:, 5:7, 2:6] = 2
    labels[:, 1:3, 8:] = 3
    return labels


def test_a_perfect_pre_annotation_costs_only_the_look() -> None:
    truth = shown()
    effort = annotation_effort(np.where(truth > 0, truth + 7, 0), truth)  # other ids, same cells
    assert (effort.slices, effort.voxels, effort.repainted, effort.edits) == (2, 160, 0, 0)


def test_without_pre_annotation_everything_is_painted() -> None:
    truth = shown()
    effort = annotation_effort(None, truth)
    assert effort.repainted == int((truth > 0).sum()) == 24 + 16 + 8
    assert (effort.added, effort.removed, effort.split, effort.merged) == (3, 0, 0, 0)


def test_a_known_repaint_gives_the_known_effort() -> None:
    truth = shown()
    predicted = np.zeros_like(truth)
    predicted[:, 1:3, :] = 5  # neurons 1 and 3 predicted as one, bridged over x 6-7
    predicted[:, 4, 0:2] = 6  # a false positive of 4 voxels
    # neuron 2 missed entirely
    effort = annotation_effort(predicted, truth)
    # repainted: 8 bridge voxels (x 6-7) + 8 of neuron 3 (matched to 1) + 16 missed; the false
    # positive is deleted whole (an edit), not repainted
    assert effort.repainted == 8 + 8 + 16
    assert (effort.added, effort.removed, effort.split, effort.merged) == (1, 1, 1, 0)
    assert effort.edits == 3


def test_a_neuron_predicted_in_two_pieces_needs_a_merge() -> None:
    truth = shown()
    predicted = truth.copy()
    predicted[:, 1:3, 3:6] = 9  # neuron 1's right half under another id
    effort = annotation_effort(predicted, truth)
    assert (effort.added, effort.removed, effort.split, effort.merged) == (0, 0, 0, 1)
    assert effort.repainted == 0  # joining the pieces is an edit, not paint


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ"):
        annotation_effort(np.zeros((1, 8, 10), np.uint32), shown())


def test_noise_merges_touching_neurons_on_every_slice() -> None:
    labels = np.zeros((3, 6, 6), np.uint32)
    labels[:, 0:3, :] = 1
    labels[:, 3:6, :] = 2  # touches 1
    truth = Instances(labels, np.zeros((0, 4), np.int64))
    assert touching_pairs(labels, [0, 2]) == {(1, 2)}
    always = sparse_labels(truth, [0, 2], AnnotatorNoise(merge=1.0))
    assert set(np.unique(always.labels[[0, 2]]).tolist()) == {1}
    never = sparse_labels(truth, [0, 2], AnnotatorNoise(merge=0.0))
    assert set(np.unique(never.labels[[0, 2]]).tolist()) == {1, 2}
