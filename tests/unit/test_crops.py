"""Tiling volumes into crops and telling neurons from background."""

from __future__ import annotations

import numpy as np

from activeseg.data.crops import bright_fraction, bright_threshold, tile_boxes


def test_tiles_cover_the_volume_and_align_the_last_tile_to_the_end() -> None:
    boxes = list(tile_boxes((10, 70, 64), (8, 32, 32), (8, 32, 32)))
    covered = np.zeros((10, 70, 64), int)
    for (z0, y0, x0), (z1, y1, x1) in boxes:
        assert (z1 - z0, y1 - y0, x1 - x0) == (8, 32, 32)
        covered[z0:z1, y0:y1, x0:x1] += 1
    assert covered.min() == 1
    assert len(boxes) == 2 * 3 * 2


def test_an_axis_shorter_than_the_crop_is_spanned_whole() -> None:
    assert next(iter(tile_boxes((5, 40, 40), (8, 32, 32), (8, 32, 32)))) == ((0, 0, 0), (5, 32, 32))


def test_bright_fraction_separates_neurons_from_noise() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(100, 5, (3, 8, 32, 32)).astype(np.float32)
    raw[1, 2:4, 10:12, :] += 400  # a bright neurite in channel 1
    threshold = bright_threshold(raw)
    assert bright_fraction(raw[:, :, :8], threshold) < 0.01
    assert bright_fraction(raw[:, 2:4, 10:12], threshold) == 1.0
