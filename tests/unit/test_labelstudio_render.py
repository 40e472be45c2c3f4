"""Rendering crop slices for Label Studio: contrast, channel mapping, overlays, slice choice."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from activeseg.labelstudio.render import (
    channel_limits,
    composite,
    data_uri,
    overlay_rgba,
    png_bytes,
    render_rgb,
)


def ramp(channels: int, height: int = 4, width: int = 5) -> np.ndarray:
    """Return (C, H, W) uint16 where channel c holds 0..H*W-1 scaled by c + 1."""
    base = np.arange(height * width, dtype=np.uint16).reshape(height, width)
    return np.stack([base * (c + 1) for c in range(channels)])


def test_render_rgb_maps_three_channels_to_rgb_with_full_contrast() -> None:
    raw = ramp(3)
    rgb = render_rgb(raw, channel_limits(raw, 0, 100))
    assert rgb.shape == (4, 5, 3)
    assert rgb.dtype == np.uint8
    # Each channel is stretched on its own: min -> 0, max -> 255 regardless of its scale.
    for c in range(3):
        assert rgb[0, 0, c] == 0
        assert rgb[-1, -1, c] == 255
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_render_rgb_one_channel_is_gray() -> None:
    rgb = render_rgb(ramp(1))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb.max() == 255


def test_render_rgb_two_channels_fill_red_and_green_only() -> None:
    raw = ramp(2)
    rgb = render_rgb(raw)
    assert rgb[..., 2].max() == 0
    assert rgb[..., 0].max() == 255
    assert rgb[..., 1].max() == 255


def test_shared_limits_keep_contrast_across_slices() -> None:
    crop = np.zeros((1, 2, 4, 4), dtype=np.float32)
    crop[0, 0] = 10.0  # a dim slice
    crop[0, 1] = 100.0  # a bright slice
    limits = channel_limits(crop, 0, 100)
    dim = render_rgb(crop[:, 0], limits)
    bright = render_rgb(crop[:, 1], limits)
    assert dim.max() < 30
    assert bright.min() == 255
    # Without shared limits each flat slice would be rendered alone (and equally dark).
    assert render_rgb(crop[:, 0]).max() == render_rgb(crop[:, 1]).max()


def test_percentiles_clip_outliers() -> None:
    raw = np.ones((1, 20, 20), dtype=np.float64)
    raw[0, :10] = 0.0
    raw[0, 0, 0] = 1e6  # one hot pixel must not crush the rest to black
    rgb = render_rgb(raw, channel_limits(raw, 1, 99))
    assert rgb[19, 19, 0] == 255
    assert rgb[10, 0, 0] == 255
    assert rgb[1, 1, 0] == 0


def test_flat_channel_renders_without_nan() -> None:
    rgb = render_rgb(np.full((3, 3, 3), 7.0))
    assert rgb.dtype == np.uint8
    assert rgb.max() == 0


@pytest.mark.parametrize("shape", [(4, 3, 3), (3, 3), (0, 3, 3)])
def test_render_rgb_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="raw must be"):
        render_rgb(np.zeros(shape))


def test_render_rgb_rejects_limits_of_other_channel_count() -> None:
    with pytest.raises(ValueError, match="limits must be"):
        render_rgb(np.zeros((3, 2, 2)), np.zeros((2, 2)))


def test_overlay_alpha_grows_with_uncertainty_and_saturates_at_vmax() -> None:
    uncertainty = np.array([[0.0, 0.5, 1.0, 4.0]])
    rgba = overlay_rgba(uncertainty, vmax=1.0, max_alpha=1.0)
    assert rgba.shape == (1, 4, 4)
    assert rgba.dtype == np.uint8
    alpha = rgba[0, :, 3]
    assert alpha[0] == 0
    assert 120 < alpha[1] < 135
    assert alpha[2] == alpha[3] == 255
    # The colour map changes too (not only the opacity).
    assert not np.array_equal(rgba[0, 1, :3], rgba[0, 2, :3])


def test_overlay_rejects_nonpositive_vmax() -> None:
    with pytest.raises(ValueError, match="vmax"):
        overlay_rgba(np.zeros((2, 2)), vmax=0.0)


def test_composite_blends_by_alpha() -> None:
    rgb = np.zeros((1, 3, 3), dtype=np.uint8)
    over = np.zeros((1, 3, 4), dtype=np.uint8)
    over[..., :3] = 200
    over[0, :, 3] = [0, 255, 128]
    out = composite(rgb, over)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 200, 100])


@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 3), (6, 7, 4)])
def test_png_bytes_round_trip(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png_bytes(image)
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_data_uri_carries_the_png() -> None:
    png = png_bytes(np.zeros((2, 2), dtype=np.uint8))
    uri = data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png


def test_png_bytes_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((2, 2), dtype=np.float32))
