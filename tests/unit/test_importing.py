"""Importing volumes: every format, hidden ground truth, bad input leaves the project as it was."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from activeseg.config import load_config
from activeseg.data.volumes import (
    has_ground_truth,
    read_crop_labels,
    read_ground_truth,
    read_raw,
)
from activeseg.errors import InputError, VolumeFormatError
from activeseg.pool import volumes
from activeseg.workflows import importing
from activeseg.workflows.project import Project, init_project


def _raw_and_labels(channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = rng.poisson(20, (channels, 16, 32, 32)).astype(np.uint16)
    labels = np.zeros((16, 32, 32), np.uint32)
    labels[:, 10:12, 5:25] = 1
    labels[4:8, 20:22, 3:30] = 2
    raw[:, labels > 0] += 500
    return raw, labels


def _assert_unchanged(project: Project) -> None:
    with project.session() as session:
        assert volumes.list_volumes(session) == []
        assert volumes.crop_counts(session) == {}
    leftovers = list(project.volumes_dir.glob("*")) if project.volumes_dir.exists() else []
    assert leftovers == []


def test_the_real_flylight_crop_keeps_its_overlapping_neurons(
    smoke_project: Project, flylight_zarr: Path
) -> None:
    imported = importing.import_volume(smoke_project, flylight_zarr, "fisbe", split="val")
    info = imported.volume
    assert imported.crops > 0 and imported.note is None
    assert (info.shape, info.channels, info.has_ground_truth) == ((50, 50, 50), 3, True)
    stored = smoke_project.resolve(info.path)
    truth = read_ground_truth(stored)
    assert truth.ids().tolist() == [1, 2, 3]
    assert truth.overlap_mask().sum() == 2315  # voxels in 2+ neurons at once, none dropped
    source = zarr.open_group(flylight_zarr, mode="r", zarr_format=2)
    gt = np.asarray(source["volumes/gt_instances"][...])
    _, stack = truth.to_stack()
    assert np.array_equal(stack, gt > 0)
    assert np.array_equal(read_raw(stored), np.asarray(source["volumes/raw"][...]))
    ome = zarr.open_group(stored, mode="r").attrs["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]


def test_ground_truth_is_hidden_unless_as_labels(smoke_project: Project, tmp_path: Path) -> None:
    raw, labels = _raw_and_labels()
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f["raw"], f["seg"] = raw, labels
    hidden = importing.import_volume(smoke_project, path, "hdf5", labels_key="seg", name="a").volume
    shown = importing.import_volume(
        smoke_project, path, "hdf5", labels_key="seg", name="b", as_labels=True
    ).volume
    with smoke_project.session() as session:
        assert {c.status for c in volumes.list_crops(session, volume="a")} == {"unlabeled"}
        labeled = volumes.list_crops(session, volume="b")
    assert has_ground_truth(smoke_project.resolve(hidden.path))
    assert labeled and {c.status for c in labeled} == {"labeled"}
    crop = labeled[0]
    assert crop.label_path is not None
    stored = read_crop_labels(smoke_project.resolve(crop.label_path))
    assert np.array_equal(stored.labels, labels[crop.box])
    assert stored.mask.all()
    assert shown.name == "b"


def test_tiff_single_channel_and_zarr_channels_last(smoke_project: Project, tmp_path: Path) -> None:
    raw, labels = _raw_and_labels(channels=1)
    tifffile.imwrite(tmp_path / "raw.tif", raw[0])
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    one = _project_with_channels(tmp_path, 1)
    tiff = importing.import_volume(
        one, tmp_path / "raw.tif", "tiff", labels_key=str(tmp_path / "labels.tif")
    ).volume
    assert (tiff.name, tiff.channels, tiff.shape) == ("raw", 1, (16, 32, 32))
    group = zarr.open_group(tmp_path / "c.zarr", mode="w")
    group.create_array("img", data=np.moveaxis(_raw_and_labels(2)[0], 0, -1))
    two = _project_with_channels(tmp_path, 2)
    info = importing.import_volume(two, tmp_path / "c.zarr", "zarr", raw_key="img").volume
    assert (info.channels, info.has_ground_truth) == (2, False)


def _project_with_channels(tmp_path: Path, channels: int) -> Project:
    config = load_config("smoke")
    model = config.model.model_copy(update={"in_channels": channels})
    path = tmp_path / f"c{channels}.yaml"
    path.write_text(config.model_copy(update={"model": model}).to_yaml())
    return init_project(tmp_path / f"project-{channels}", path)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str, dict[str, str]]]:
    raw, labels = _raw_and_labels()
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f["raw"], f["seg"], f["flat"] = raw, labels, raw[0, 0]
        f["small"], f["float"] = labels[:, :16], labels.astype(np.float32)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    ok = tmp_path / "ok.h5"
    return {
        "wrong dimensionality": (ok, "hdf5", {"raw_key": "flat"}),
        "shape mismatch": (ok, "hdf5", {"labels_key": "small"}),
        "float labels": (ok, "hdf5", {"labels_key": "float"}),
        "missing dataset": (ok, "hdf5", {"labels_key": "nope"}),
        "unreadable file": (tmp_path / "junk.h5", "hdf5", {}),
        "path outside": (ok, "hdf5", {"raw_key": "../raw"}),
        "missing file": (tmp_path / "absent.zarr", "fisbe", {}),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong dimensionality",
        "shape mismatch",
        "float labels",
        "missing dataset",
        "unreadable file",
        "path outside",
        "missing file",
    ],
)
def test_bad_input_is_named_and_leaves_the_project_unchanged(
    smoke_project: Project, tmp_path: Path, case: str
) -> None:
    path, fmt, keys = _bad_inputs(tmp_path)[case]
    with pytest.raises(VolumeFormatError, match=path.name):
        importing.import_volume(smoke_project, path, fmt, **keys)  # type: ignore[arg-type]
    _assert_unchanged(smoke_project)


def test_a_crash_while_registering_removes_the_written_zarr(
    smoke_project: Project, flylight_zarr: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(importing.pool_volumes, "add_crops", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        importing.import_volume(smoke_project, flylight_zarr, "fisbe", as_labels=True)
    _assert_unchanged(smoke_project)
    assert not smoke_project.labels_dir.exists() or not any(smoke_project.labels_dir.iterdir())


def test_a_duplicate_name_is_refused(smoke_project: Project, flylight_zarr: Path) -> None:
    importing.import_volume(smoke_project, flylight_zarr, "fisbe")
    with pytest.raises(InputError, match="already in this project"):
        importing.import_volume(smoke_project, flylight_zarr, "fisbe")


def _zarr_raw(tmp_path: Path, raw: np.ndarray, name: str = "v.zarr", **attrs: object) -> Path:
    group = zarr.open_group(tmp_path / name, mode="w")
    group.create_array("raw", data=raw)
    group.attrs.update(attrs)
    return tmp_path / name


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raw_is_refused_and_nothing_is_stored(
    smoke_project: Project, tmp_path: Path, bad: float
) -> None:
    raw = _raw_and_labels()[0].astype(np.float32)
    raw[1, 9, 3, 4] = bad
    path = _zarr_raw(tmp_path, raw)
    with pytest.raises(VolumeFormatError, match=r"NaN or infinite values in z 0\.\.15"):
        importing.import_volume(smoke_project, path, "zarr")
    _assert_unchanged(smoke_project)


@pytest.mark.parametrize(
    ("raw", "attrs", "message"),
    [
        (np.zeros((3, 16, 32, 32), bool), {}, "integer or float"),
        (np.zeros((3, 16, 32, 32), np.complex64), {}, "integer or float"),
        (np.zeros((3, 0, 32, 32), np.uint16), {}, "empty"),
        (np.zeros((16, 32, 32), np.uint16), {"voxel_size": [-1, 0, 1]}, "voxel size"),
        (np.zeros((16, 32, 32), np.uint16), {"voxel_size": ["a", "b", "c"]}, "voxel size"),
        (np.zeros((16, 32, 32), np.uint16), {"voxel_size": [1, 1]}, "voxel size"),
    ],
    ids=["bool", "complex", "z=0", "negative voxel", "string voxel", "two voxel sizes"],
)
def test_unusable_raw_is_refused_with_a_named_error(
    smoke_project: Project, tmp_path: Path, raw: np.ndarray, attrs: dict[str, object], message: str
) -> None:
    path = _zarr_raw(tmp_path, raw, **attrs)
    with pytest.raises(VolumeFormatError, match=message):
        importing.import_volume(smoke_project, path, "zarr")
    _assert_unchanged(smoke_project)


def test_the_first_volume_fixes_the_channels_of_an_auto_project(
    smoke_project: Project, tmp_path: Path
) -> None:
    assert smoke_project.config.model.in_channels == "auto"
    two = _zarr_raw(tmp_path, _raw_and_labels(channels=2)[0], name="two.zarr")
    importing.import_volume(smoke_project, two, "zarr")
    three = _zarr_raw(tmp_path, _raw_and_labels(channels=3)[0], name="three.zarr")
    with pytest.raises(InputError, match=r"has 3 channel.*have 2 .*fixed by its first volume"):
        importing.import_volume(smoke_project, three, "zarr")
    with smoke_project.session() as session:
        assert [v.name for v in volumes.list_volumes(session)] == ["two"]


def test_a_volume_with_other_channels_than_the_config_is_refused(tmp_path: Path) -> None:
    project = _project_with_channels(tmp_path, 3)
    path = _zarr_raw(tmp_path, _raw_and_labels(channels=1)[0])
    with pytest.raises(InputError, match=r"1 channel.*model.in_channels is 3"):
        importing.import_volume(project, path, "zarr")
    _assert_unchanged(project)


@pytest.mark.parametrize("name", ["../../x", "/abs", ".hidden", "a b", "x.partial", ""])
def test_names_outside_the_safe_alphabet_are_refused(
    smoke_project: Project, flylight_zarr: Path, name: str
) -> None:
    with pytest.raises(InputError, match="not allowed"):
        importing.import_volume(smoke_project, flylight_zarr, "fisbe", name=name or "-")
    _assert_unchanged(smoke_project)


def test_a_volume_without_bright_crops_says_why(smoke_project: Project, tmp_path: Path) -> None:
    path = _zarr_raw(tmp_path, np.full((3, 16, 32, 32), 7, np.uint16))
    imported = importing.import_volume(smoke_project, path, "zarr")
    assert imported.crops == 0
    assert imported.note is not None and "crops.min_foreground" in imported.note


def test_leftovers_of_a_killed_import_do_not_block_the_next(
    smoke_project: Project, flylight_zarr: Path
) -> None:
    # killed between the rename and the commit: the folder exists, the ledger has no row
    orphan = smoke_project.volumes_dir / "crop.zarr"
    (orphan / "0").mkdir(parents=True)
    stale = smoke_project.volumes_dir / ".crop.zarr.4242-deadbeef.partial"
    stale.mkdir()
    imported = importing.import_volume(smoke_project, flylight_zarr, "fisbe", name="crop")
    assert smoke_project.resolve(imported.volume.path) == orphan
    assert read_raw(orphan).shape == (3, 50, 50, 50)
    assert not stale.exists()
