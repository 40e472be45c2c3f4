"""Tests of reading and writing the FISBe zarr layout, on tiny arrays and the real crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from activeseg.core.instances import Instances
from activeseg.data.fisbe import FISBE_VOXEL_SIZE, GT_INSTANCES, RAW, read_fisbe, write_fisbe
from activeseg.errors import VolumeFormatError

CROP_OVERLAP_VOXELS = 2315  # voxels in two or more neurons (tests/data/README.md)
CROP_TRIPLE_VOXELS = 70  # of those, voxels in all three neurons: one overlap row per extra id


def _overlapping_instances() -> Instances:
    """Return three neurons in a 6x7x8 volume: 2 and 3 touch, 1 crosses both (8 shared voxels)."""
    stack = np.zeros((3, 6, 7, 8), bool)
    stack[0, 2, 1:6, 1:7] = True
    stack[1, 1:5, 3, 2:6] = True
    stack[2, 1:5, 4, 2:6] = True
    return Instances.from_stack(stack)


def _raw(channels: int = 3, dtype: type = np.uint16) -> np.ndarray:
    """Return a (channels, 6, 7, 8) random raw volume."""
    return np.random.default_rng(0).integers(0, 4000, (channels, 6, 7, 8)).astype(dtype)


def _stored(path: Path, name: str) -> np.ndarray:
    """Return the dataset ``name`` of the zarr v2 group at ``path`` as a numpy array."""
    node = zarr.open_group(path, mode="r", zarr_format=2)[name]
    assert isinstance(node, zarr.Array)
    return np.asarray(node[...])


def _write_group(path: Path, **arrays: np.ndarray) -> Path:
    """Return ``path`` after writing the named arrays (keys use '__' for '/') as zarr v2."""
    group = zarr.open_group(path, mode="w", zarr_format=2)
    for name, array in arrays.items():
        group.create_array(name.replace("__", "/"), data=array)
    return path


def test_real_crop_has_three_overlapping_neurons(flylight_zarr: Path) -> None:
    volume = read_fisbe(flylight_zarr)
    stored = _stored(flylight_zarr, GT_INSTANCES)
    ids, stack = volume.instances.to_stack()
    np.testing.assert_array_equal(ids, [1, 2, 3])
    np.testing.assert_array_equal(stack, stored > 0)
    assert volume.instances.overlap_mask().sum() == CROP_OVERLAP_VOXELS
    assert len(volume.instances.overlaps) == CROP_OVERLAP_VOXELS + CROP_TRIPLE_VOXELS


def test_real_crop_raw_and_voxel_size(flylight_zarr: Path) -> None:
    volume = read_fisbe(flylight_zarr)
    stored = _stored(flylight_zarr, RAW)
    assert volume.raw.dtype == np.uint16
    assert volume.raw.shape == (3, 50, 50, 50)
    np.testing.assert_array_equal(volume.raw, stored)
    assert volume.voxel_size == FISBE_VOXEL_SIZE  # the crop stores none


def test_real_crop_survives_a_rewrite(flylight_zarr: Path, tmp_path: Path) -> None:
    volume = read_fisbe(flylight_zarr)
    write_fisbe(tmp_path / "again.zarr", volume.raw, volume.instances, volume.voxel_size)
    again = read_fisbe(tmp_path / "again.zarr")
    np.testing.assert_array_equal(again.raw, volume.raw)
    np.testing.assert_array_equal(again.instances.to_stack()[1], volume.instances.to_stack()[1])


def test_round_trip_keeps_raw_instances_and_voxel_size(tmp_path: Path) -> None:
    instances, raw = _overlapping_instances(), _raw()
    write_fisbe(tmp_path / "v.zarr", raw, instances, voxel_size=(2.0, 0.5, 0.5))
    volume = read_fisbe(tmp_path / "v.zarr")
    assert volume.raw.dtype == raw.dtype
    np.testing.assert_array_equal(volume.raw, raw)
    np.testing.assert_array_equal(volume.instances.labels, instances.labels)
    np.testing.assert_array_equal(volume.instances.to_stack()[1], instances.to_stack()[1])
    assert volume.instances.overlap_mask().sum() == 8
    assert volume.voxel_size == (2.0, 0.5, 0.5)


def test_written_labels_follow_the_fisbe_convention(tmp_path: Path) -> None:
    write_fisbe(tmp_path / "v.zarr", _raw(), _overlapping_instances())
    labels = _stored(tmp_path / "v.zarr", GT_INSTANCES)
    assert labels.dtype == np.uint8
    assert labels.shape == (3, 6, 7, 8)
    for channel in range(3):
        np.testing.assert_array_equal(np.unique(labels[channel]), [0, channel + 1])


def test_ids_are_renumbered_by_channel(tmp_path: Path) -> None:
    labels = np.zeros((6, 7, 8), np.uint32)
    labels[1, 1:3, 1:3], labels[4, 4:6, 4:6] = 9, 5
    write_fisbe(tmp_path / "v.zarr", _raw(), Instances.from_labels(labels))
    volume = read_fisbe(tmp_path / "v.zarr")
    np.testing.assert_array_equal(volume.instances.ids(), [1, 2])
    np.testing.assert_array_equal(volume.instances.mask(1), labels == 5)
    np.testing.assert_array_equal(volume.instances.mask(2), labels == 9)


def test_many_neurons_are_stored_as_uint16(tmp_path: Path) -> None:
    labels = np.arange(1, 301, dtype=np.uint32).reshape(3, 10, 10)
    write_fisbe(tmp_path / "v.zarr", np.zeros((3, 10, 10), np.uint8), Instances.from_labels(labels))
    stored = _stored(tmp_path / "v.zarr", GT_INSTANCES)
    assert stored.dtype == np.uint16
    assert int(stored[299].max()) == 300
    np.testing.assert_array_equal(read_fisbe(tmp_path / "v.zarr").instances.labels, labels)


def test_single_channel_raw_is_read_as_one_channel(tmp_path: Path) -> None:
    raw = _raw(1)[0]
    _write_group(
        tmp_path / "v.zarr",
        volumes__raw=raw,
        volumes__gt_instances=_overlapping_instances().to_stack()[1].astype(np.uint8),
    )
    volume = read_fisbe(tmp_path / "v.zarr")
    assert volume.raw.shape == (1, 6, 7, 8)
    np.testing.assert_array_equal(volume.raw[0], raw)


def test_write_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(VolumeFormatError, match="does not match"):
        write_fisbe(
            tmp_path / "v.zarr", np.zeros((3, 6, 7, 9), np.uint16), _overlapping_instances()
        )


def _gt() -> np.ndarray:
    """Return the (3, 6, 7, 8) uint8 FISBe label stack of the overlapping instances."""
    ids, stack = _overlapping_instances().to_stack()
    return (stack * ids[:, None, None, None]).astype(np.uint8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"volumes__gt_instances": _gt()}, "'volumes/raw' is missing"),
        ({"volumes__raw": _raw()}, "'volumes/gt_instances' is missing"),
        ({"volumes__raw": _raw()[None], "volumes__gt_instances": _gt()}, "raw: raw data must be"),
        ({"volumes__raw": _raw()[0, 0], "volumes__gt_instances": _gt()}, "raw: raw data must be"),
        ({"volumes__raw": _raw(), "volumes__gt_instances": _gt()[0]}, "must be \\(N, Z, Y, X\\)"),
        ({"volumes__raw": _raw(), "volumes__gt_instances": _gt()[:, 1:]}, "does not match"),
        (
            {"volumes__raw": _raw(), "volumes__gt_instances": _gt().astype(np.float32)},
            "must hold integer labels",
        ),
    ],
)
def test_malformed_groups_raise_with_path_and_dataset(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _write_group(tmp_path / "bad.zarr", **arrays)
    with pytest.raises(VolumeFormatError, match=message) as caught:
        read_fisbe(path)
    assert str(path) in str(caught.value)


def test_unreadable_paths_raise(tmp_path: Path) -> None:
    plain_file = tmp_path / "notes.txt"
    plain_file.write_text("not zarr")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    for path in (tmp_path / "missing.zarr", plain_file, empty_folder):
        with pytest.raises(VolumeFormatError, match="not a readable zarr v2 group") as caught:
            read_fisbe(path)
        assert str(path) in str(caught.value)


def test_zarr_v3_group_is_not_read_as_fisbe(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "v3.zarr", mode="w", zarr_format=3)
    group.create_array(RAW, data=_raw())
    with pytest.raises(VolumeFormatError):
        read_fisbe(tmp_path / "v3.zarr")
