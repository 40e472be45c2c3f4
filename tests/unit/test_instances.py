"""Overlapping instances: label image + overlap table, and the dense stack form."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.core.instances import Instances
from activeseg.errors import InputError


def _stack() -> np.ndarray:
    stack = np.zeros((3, 4, 5, 6), bool)
    stack[0, 0, :2] = True
    stack[1, 0, 1:3] = True  # overlaps instance 1 on row y=1
    stack[2, 3, 4, 5] = True
    return stack


def test_stack_round_trip_keeps_overlaps() -> None:
    instances = Instances.from_stack(_stack())
    ids, stack = instances.to_stack()
    assert ids.tolist() == [1, 2, 3]
    assert np.array_equal(stack, _stack())
    assert len(instances.overlaps) == 6  # one row of 6 voxels in both 1 and 2
    assert instances.overlap_mask().sum() == 6


def test_crop_rebases_overlaps() -> None:
    cropped = Instances.from_stack(_stack()).crop((slice(0, 1), slice(1, 5), slice(2, 6)))
    assert cropped.shape == (1, 4, 4)
    assert np.array_equal(cropped.mask(2), _stack()[1, 0:1, 1:5, 2:6])
    assert np.array_equal(cropped.mask(1), _stack()[0, 0:1, 1:5, 2:6])


def test_float_labels_are_refused() -> None:
    with pytest.raises(InputError, match="integer"):
        Instances.from_labels(np.zeros((2, 2, 2), np.float32))
