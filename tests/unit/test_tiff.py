"""TIFF keeps its axes and calibration: Fiji hyperstacks of any axis order, OME-TIFF, and
napari's label TIFFs read right on import and on ingest --from-file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from activeseg.data.importers import read_source, read_tiff_labels
from activeseg.data.volumes import read_crop_labels
from activeseg.errors import VolumeFormatError
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.importing import import_volume
from activeseg.workflows.ingest import ingest_file
from activeseg.workflows.project import Project

SHAPE = (5, 16, 20)  # Z ≤ 8: the old guess took such a Z for the channel axis


def raw_czyx() -> np.ndarray:
    return (np.arange(3 * np.prod(SHAPE)) % 251).astype(np.uint8).reshape(3, *SHAPE)


IMAGEJ = {"imagej": True, "resolution": (1 / 0.25, 1 / 0.5),  # (x, y) pixels per µm
          "metadata": {"spacing": 2.0, "unit": "um"}}  # fmt: skip
OME = {"ome": True, "metadata": {"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}}


@pytest.mark.parametrize(
    ("axes", "writer"),
    [("ZCYX", IMAGEJ), ("CZYX", OME), ("ZYXC", IMAGEJ | {"photometric": "rgb"})],
    ids=["fiji-ZCYX", "ome-CZYX", "rgb-ZYXC"],
)
def test_hyperstacks_of_each_order_read_as_czyx_with_calibration(
    tmp_path: Path, axes: str, writer: dict
) -> None:
    raw = raw_czyx()
    stored = np.transpose(raw, ["CZYX".index(a) for a in axes])
    path = tmp_path / "stack.tif"
    named = axes.replace("C", "S") if "photometric" in writer else axes  # RGB samples
    metadata = {**writer["metadata"], "axes": named}
    tifffile.imwrite(path, stored, **(writer | {"metadata": metadata}))
    source = read_source(path, "tiff")
    assert source.raw.shape == (3, *SHAPE)
    np.testing.assert_array_equal(source.raw.slab(0, SHAPE[0]), raw)
    assert source.voxel_size == pytest.approx((2.0, 0.5, 0.25))


def test_ome_tiff_calibration_is_read_in_micrometres(tmp_path: Path) -> None:
    path = tmp_path / "stack.ome.tif"
    metadata = {"axes": "CZYX", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}  # fmt: skip
    tifffile.imwrite(path, raw_czyx(), metadata=metadata)
    source = read_source(path, "tiff")
    assert source.raw.shape == (3, *SHAPE)
    np.testing.assert_array_equal(source.raw.slab(1, 3), raw_czyx()[:, 1:3])
    assert source.voxel_size == pytest.approx((2.0, 0.5, 0.25))


def test_a_plain_stack_is_one_channel_with_unit_voxels(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, raw_czyx()[0])
    source = read_source(path, "tiff")
    assert source.raw.shape == (1, *SHAPE) and source.voxel_size == (1.0, 1.0, 1.0)


def test_a_time_series_is_refused_with_its_axes(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((2, *SHAPE), np.uint8), imagej=True,
                     metadata={"axes": "TZYX"})  # fmt: skip
    with pytest.raises(VolumeFormatError, match="axis T has 2"):
        read_source(path, "tiff")


def test_napari_label_tiffs_read_as_zyx(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, np.int32)
    labels[1:3, 2:8, 2:8] = 4
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, labels)  # what napari's Labels layer "Save" writes
    np.testing.assert_array_equal(read_tiff_labels(path), labels)


def test_import_then_ingest_a_napari_label_tiff_for_a_crop(
    smoke_project: Project, tmp_path: Path
) -> None:
    raw = np.zeros((16, 3, 64, 64), np.uint16)  # a Fiji hyperstack, Z C Y X
    raw[4:12, :, 8:56, 8:56] = 800
    volume = tmp_path / "stack.tif"
    tifffile.imwrite(volume, raw, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZCYX", "spacing": 1.0, "unit": "um"})  # fmt: skip
    import_volume(smoke_project, volume, "tiff")
    with smoke_project.session() as session:
        (info,) = pool_volumes.list_volumes(session)
        crop = pool_volumes.list_crops(session, split="pool")[0]
    assert (info.channels, info.shape, info.voxel_size) == (3, (16, 64, 64), (1.0, 0.25, 0.25))
    labels = np.zeros(crop.shape, np.int32)
    labels[1:4, 2:9, 2:9] = 3
    drawn = tmp_path / "crop-labels.tif"
    tifffile.imwrite(drawn, labels)
    assert ingest_file(smoke_project, crop.id, drawn) == "ingested"
    with smoke_project.session() as session:
        stored = pool_volumes.get_crop(session, crop.id).label_path
    path = smoke_project.resolve(str(stored))
    np.testing.assert_array_equal(read_crop_labels(path).labels, labels)
    dataset = zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    translation = dataset["coordinateTransformations"][1]["translation"]
    assert translation == [o * s for o, s in zip(crop.origin, info.voxel_size, strict=True)]
    elsewhere = zarr.open_group(tmp_path / "ome-labels.zarr", mode="w")  # "0" and no mask
    elsewhere.create_array("0", data=labels * 2, dimension_names=["z", "y", "x"])
    assert ingest_file(smoke_project, crop.id, tmp_path / "ome-labels.zarr") == "updated"
