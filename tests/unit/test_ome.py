"""What activeseg writes opens right in napari, Fiji and neuroglancer: every zarr it writes for
people is valid OME-Zarr 0.5 (checked with ome-zarr-models), named, coloured and placed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from test_predict import trained_model
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.core.instances import Instances
from activeseg.data import ome
from activeseg.data.fisbe import write_fisbe
from activeseg.data.importers import open_tiff, read_source
from activeseg.data.sources import label_source, raw_source
from activeseg.data.volumes import read_crop_labels, write_volume
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows import predict as predict_workflow
from activeseg.workflows.importing import import_volume
from activeseg.workflows.project import Project
from activeseg.workflows.view import prediction_scene

VOXEL = (2.0, 0.5, 0.25)
runner = CliRunner()


def mcfo(shape: tuple[int, int, int] = (12, 40, 36)) -> tuple[np.ndarray, np.ndarray]:
    """Return a bright 3-channel raw (C, Z, Y, X) with two neurons and their label image."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 50, (3, *shape)).astype(np.uint16)
    labels = np.zeros(shape, np.uint32)
    labels[2:10, 5:20, 5:15] = 1
    labels[3:11, 22:35, 18:30] = 2
    raw[0][labels == 1] = 900
    raw[1][labels == 2] = 700
    return raw, labels


def transforms(attrs: dict, level: int = 0) -> dict[str, list[float]]:
    dataset = attrs["multiscales"][0]["datasets"][level]
    return {t["type"]: t[t["type"]] for t in dataset["coordinateTransformations"]}


def zarr_outputs(root: Path) -> list[Path]:
    """Return the outermost zarr stores under a project folder."""
    found = sorted(p.parent for p in root.rglob("zarr.json"))
    return [p for p in found if not any(q in p.parents for q in found) and p.suffix == ".zarr"]


@pytest.fixture
def imported(smoke_project: Project, tmp_path: Path) -> Project:
    raw, labels = mcfo()
    write_fisbe(tmp_path / "mcfo.zarr", raw, Instances.from_labels(labels), VOXEL)
    import_volume(smoke_project, tmp_path / "mcfo.zarr", "fisbe", as_labels=True, name="brain1")
    return smoke_project


def test_an_imported_volume_is_named_coloured_and_calibrated(imported: Project) -> None:
    group = zarr.open_group(imported.volumes_dir / "brain1.zarr", mode="r")
    image = Image.from_zarr(group)
    attrs = group.attrs["ome"]
    assert image.ome_attributes.multiscales[0].name == "brain1"  # not the temporary name
    assert transforms(attrs)["scale"] == [1.0, *VOXEL]
    channels = attrs["omero"]["channels"]
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]
    assert channels[0]["window"]["max"] == 900 and channels[1]["window"]["max"] == 700
    assert channels[2]["window"]["end"] <= 49
    gt = ImageLabel.from_zarr(group["labels/gt"])
    colors = gt.ome_attributes.image_label.colors
    assert gt.ome_attributes.image_label.version == "0.5"
    assert colors is not None and [c.label_value for c in colors] == [1, 2]
    assert len({c.rgba for c in colors}) == 2


def test_crop_labels_are_label_images_placed_at_their_crop(imported: Project) -> None:
    with imported.session() as session:
        crops = pool_volumes.list_crops(session)
    assert crops
    for crop in crops:
        path = imported.resolve(crop.label_path)  # type: ignore[arg-type]
        group = zarr.open_group(path, mode="r")
        ImageLabel.from_zarr(group)
        place = transforms(group.attrs["ome"])
        assert place["translation"] == [o * s for o, s in zip(crop.origin, VOXEL, strict=True)]
        assert place["scale"] == list(VOXEL)
        assert read_crop_labels(path).labels.shape == crop.shape


def test_a_large_volume_gets_a_pyramid_and_its_labels_the_same_levels(tmp_path: Path) -> None:
    raw, labels = mcfo((12, 40, 36))
    path = tmp_path / "big.zarr"
    write_volume(path, raw_source(raw, "raw"), name="big",
                 ground_truth=label_source(labels, labels.shape, "gt"),
                 voxel_size=VOXEL, chunks=(4, 16, 16), pyramid_min_size=10)  # fmt: skip
    group = zarr.open_group(path, mode="r")
    image = Image.from_zarr(group)
    assert [d.path for d in image.datasets[0]] == ["0", "1", "2"]
    assert group["1"].shape == (3, 6, 20, 18) and group["2"].shape == (3, 3, 10, 9)
    first = raw[:, :2, :2, :2].reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(group["1"][:, 0, 0, 0], np.rint(first))
    assert transforms(group.attrs["ome"], 1)["scale"] == [1.0, 4.0, 1.0, 0.5]
    assert group["labels/gt/2"].shape == (3, 10, 9)
    assert set(np.unique(group["labels/gt/1"][...])) == {0, 1, 2}  # ids never blend


def test_ome_zarr_input_keeps_its_voxel_size_and_labels(imported: Project) -> None:
    source = read_source(imported.volumes_dir / "brain1.zarr", "zarr")
    assert source.voxel_size == VOXEL
    assert source.raw.shape == (3, 12, 40, 36)
    assert source.labels is not None
    assert set(source.labels.slab(0, 12).ids()) == {1, 2}


def test_every_zarr_the_product_writes_validates(
    imported: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(predict_workflow, "latest_model_path", lambda _: tmp_path)
    monkeypatch.setattr(predict_workflow, "load_model", lambda _: trained_model())
    out = imported.root / "predictions" / "brain1-pred.zarr"
    out.parent.mkdir(parents=True, exist_ok=True)
    predict_workflow.predict_volume(imported, "brain1", out)
    pred = zarr.open_group(out, mode="r")
    image = Image.from_zarr(pred)
    assert transforms(pred.attrs["ome"])["scale"] == list(VOXEL)
    assert image.labels is not None and image.labels.ome_attributes.labels == ["consensus"]
    scene = prediction_scene(imported, out)  # what `activeseg view pred.zarr` shows
    assert [c.color for c in scene.channels] == ["FF0000", "00FF00", "0000FF"]
    assert scene.scale == VOXEL and scene.instances is not None and scene.doubt is not None
    outputs = zarr_outputs(imported.root)
    assert len(outputs) >= 3  # the volume, a crop's labels, the prediction
    for path in outputs:
        assert isinstance(open_ome_zarr(zarr.open_group(path, mode="r")), (Image, ImageLabel))


def test_label_colours_are_distinct_and_skipped_for_huge_label_sets() -> None:
    table = ome.label_colors(range(1, 50))
    assert len({tuple(c["rgba"]) for c in table}) == 49
    assert ome.label_colors(range(ome.MAX_LABEL_COLORS + 1)) == []


def test_export_puts_crop_labels_on_their_crop_under_the_image(imported: Project) -> None:
    with imported.session() as session:
        crop = pool_volumes.list_crops(session)[-1]
    volume = imported.volumes_dir / "brain1.zarr"
    labels = str(imported.resolve(str(crop.label_path)))
    result = runner.invoke(
        app, ["export", labels, "--image", "brain1", "--name", "crop", "-p", str(imported.root)]
    )
    assert result.exit_code == 0, result.output
    group = zarr.open_group(volume, mode="r")
    image = Image.from_zarr(group)
    assert image.labels is not None and image.labels.ome_attributes.labels == ["gt", "crop"]
    placed = np.asarray(group["labels/crop/0"][...])
    truth = np.asarray(group["labels/gt/0"][...])
    assert np.array_equal(placed[crop.box], truth[crop.box]) and placed[crop.box].any()
    outside = np.ones(placed.shape, bool)
    outside[crop.box] = False
    assert not placed[outside].any()
    again = runner.invoke(app, ["export", "brain1", "--image", "brain1", "--name", "crop",
                                "-p", str(imported.root)])  # fmt: skip
    assert again.exit_code == 2 and "already holds" in again.output


def test_export_to_imagej_tiff_keeps_the_calibration(imported: Project, tmp_path: Path) -> None:
    out = tmp_path / "gt.tif"
    result = runner.invoke(app, ["export", "brain1", "--to", "tiff", "--out", str(out),
                                 "-p", str(imported.root), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    array, axes, size = open_tiff(out)
    assert axes == "ZYX" and size == pytest.approx(VOXEL)
    back = read_source(imported.volumes_dir / "brain1.zarr", "zarr").labels
    assert back is not None
    np.testing.assert_array_equal(np.asarray(array), back.slab(0, 12).labels)


def test_a_round_crop_analysis_is_an_ome_image_placed_at_its_crop(tmp_path: Path) -> None:
    from activeseg.workflows.score import CropAnalysis, write_analysis

    zeros = np.zeros((4, 8, 8), np.float32)
    labels = np.zeros((4, 8, 8), np.uint32)
    analysis = CropAnalysis(consensus=labels, samples=labels[None], foreground=zeros,
                            entropy=zeros, mutual_information=zeros, risks=[],
                            descriptor=np.zeros(4, np.float32))  # fmt: skip
    path = tmp_path / "crop-3.zarr"
    write_analysis(path, analysis, ome.Placement(VOXEL, (4, 8, 16)))
    group = zarr.open_group(path, mode="r")
    Image.from_zarr(group)
    assert transforms(group.attrs["ome"])["translation"] == [8.0, 4.0, 4.0]
    assert group["consensus"].metadata.dimension_names == ("z", "y", "x")


def test_downsampling_an_odd_edge_repeats_its_last_plane() -> None:
    block = np.arange(27, dtype=np.uint16).reshape(1, 3, 3, 3)
    half = ome.downsample(block, labels=False)
    assert half.shape == (1, 2, 2, 2) and half.dtype == np.uint16
    assert half[0, 1, 1, 1] == 26  # the corner voxel alone, repeated
    assert half[0, 0, 0, 0] == round(block[0, :2, :2, :2].mean())
