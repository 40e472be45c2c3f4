"""Tests of the synthetic MCFO-like volume generator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from activeseg.core.instances import Instances
from activeseg.data.synthetic import SyntheticVolume, generate_mcfo
from activeseg.errors import InputError

SHAPE = (32, 128, 128)
N_NEURONS = 8


@pytest.fixture(scope="module")
def volume() -> SyntheticVolume:
    """Return the demo-sized synthetic volume (seed 0)."""
    return generate_mcfo(SHAPE, N_NEURONS, seed=0)


def _same(a: SyntheticVolume, b: SyntheticVolume) -> bool:
    """Return whether two synthetic volumes hold identical arrays."""
    return (
        np.array_equal(a.raw, b.raw)
        and np.array_equal(a.instances.labels, b.instances.labels)
        and np.array_equal(a.instances.overlaps, b.instances.overlaps)
        and np.array_equal(a.colors, b.colors)
    )


def test_same_seed_gives_identical_volumes(volume: SyntheticVolume) -> None:
    assert _same(volume, generate_mcfo(SHAPE, N_NEURONS, seed=0))


def test_other_seed_gives_other_volume(volume: SyntheticVolume) -> None:
    other = generate_mcfo(SHAPE, N_NEURONS, seed=1)
    assert not np.array_equal(volume.raw, other.raw)
    assert not np.array_equal(volume.instances.labels, other.instances.labels)


def test_shapes_and_dtypes(volume: SyntheticVolume) -> None:
    assert volume.raw.shape == (3, *SHAPE)
    assert volume.raw.dtype == np.uint16
    assert volume.instances.labels.shape == SHAPE
    assert volume.instances.labels.dtype == np.uint32
    assert volume.instances.overlaps.dtype == np.int64
    assert volume.colors.shape == (N_NEURONS, 3)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_channel_count_is_respected(channels: int) -> None:
    small = generate_mcfo((8, 32, 32), 2, seed=3, channels=channels)
    assert small.raw.shape == (channels, 8, 32, 32)
    assert small.colors.shape == (2, channels)


def test_every_neuron_is_present(volume: SyntheticVolume) -> None:
    np.testing.assert_array_equal(volume.instances.ids(), np.arange(1, N_NEURONS + 1))


def test_neurons_are_large_and_span_the_volume(volume: SyntheticVolume) -> None:
    for instance_id in volume.instances.ids():
        mask = volume.instances.mask(int(instance_id))
        _, ys, xs = np.nonzero(mask)
        assert mask.sum() >= 300, f"neuron {instance_id} has only {mask.sum()} voxels"
        longest = max(np.ptp(ys) / SHAPE[1], np.ptp(xs) / SHAPE[2])
        assert longest >= 0.5, f"neuron {instance_id} spans only {longest:.0%} of the volume"


def test_neurons_are_thin_tubes(volume: SyntheticVolume) -> None:
    for instance_id in volume.instances.ids():
        mask = volume.instances.mask(int(instance_id))
        from_skeleton = ndimage.distance_transform_edt(~skeletonize(mask))
        depth = ndimage.distance_transform_edt(mask)
        assert np.mean(from_skeleton[mask] <= 3) >= 0.95, f"neuron {instance_id} is not tubular"
        assert np.percentile(depth[mask], 99) <= 3.0, f"neuron {instance_id} is too thick"


def test_foreground_is_a_few_percent(volume: SyntheticVolume) -> None:
    foreground = np.mean(volume.instances.labels > 0)
    assert 0.01 <= foreground <= 0.08


def test_crossings_are_recorded_as_overlaps(volume: SyntheticVolume) -> None:
    rows = volume.instances.overlaps
    assert len(rows) > 100
    assert len(np.unique(rows, axis=0)) == len(rows)
    first_ids = volume.instances.labels[rows[:, 0], rows[:, 1], rows[:, 2]]
    # The label image keeps the smallest id; each row names a further, larger one.
    assert np.all((first_ids > 0) & (first_ids < rows[:, 3]))


def test_overlaps_survive_the_dense_round_trip(volume: SyntheticVolume) -> None:
    ids, stack = volume.instances.to_stack()
    again = Instances.from_stack(stack, ids)
    assert np.array_equal(again.labels, volume.instances.labels)
    assert np.array_equal(again.overlap_mask(), volume.instances.overlap_mask())
    assert np.sum(stack.sum(axis=0) > 1) == volume.instances.overlap_mask().sum()


def test_neurons_are_brighter_than_background(volume: SyntheticVolume) -> None:
    foreground = volume.instances.labels > 0
    background = ~ndimage.binary_dilation(foreground, iterations=4)
    for instance_id in volume.instances.ids():
        channel = int(np.argmax(volume.colors[instance_id - 1]))
        image = volume.raw[channel].astype(float)
        level, noise = image[background].mean(), image[background].std()
        on_neuron = image[volume.instances.labels == instance_id].mean()
        assert on_neuron > level + 3 * noise, f"neuron {instance_id} is invisible"


def test_background_is_noisy_but_low(volume: SyntheticVolume) -> None:
    background = ~ndimage.binary_dilation(volume.instances.labels > 0, iterations=4)
    for channel in volume.raw:
        values = channel[background].astype(float)
        assert 3 < values.mean() < 30
        assert values.std() > 1.0


def test_blur_is_stronger_along_z(volume: SyntheticVolume) -> None:
    image = volume.raw.astype(float).sum(axis=0)
    foreground = volume.instances.labels > 0
    along_z = np.abs(np.diff(image, axis=0))[foreground[1:] & foreground[:-1]].mean()
    along_x = np.abs(np.diff(image, axis=2))[foreground[:, :, 1:] & foreground[:, :, :-1]].mean()
    # Geometry alone makes z steps larger (neurites lie mostly in yx); only the blur reverses it.
    assert along_z < 0.9 * along_x


def test_colours_are_random_channel_subsets_with_dim_neurons() -> None:
    colors = np.concatenate([generate_mcfo((8, 64, 64), 20, seed=s).colors for s in range(2)])
    expressed = colors > 0
    assert expressed.any(axis=1).all()
    assert len(np.unique(expressed, axis=0)) >= 4
    brightest = colors.max(axis=1)
    assert brightest.min() < 150 < brightest.max()
    # hues vary continuously: expressed channels run from a fifth of the strongest to all of it
    relative = colors[expressed] / np.repeat(brightest, expressed.sum(axis=1))
    assert relative.min() >= 0.2 - 1e-9
    assert (relative < 0.5).any()
    assert ((relative > 0.5) & (relative < 1.0)).any()


@pytest.mark.parametrize(
    ("shape", "n_neurons", "channels"),
    [((0, 16, 16), 2, 3), ((16, 16), 2, 3), ((8, 16, 16), 0, 3), ((8, 16, 16), 2, 0)],
)
def test_unusable_arguments_raise(
    shape: tuple[int, int, int], n_neurons: int, channels: int
) -> None:
    with pytest.raises(InputError):
        generate_mcfo(shape, n_neurons, seed=0, channels=channels)
