"""Tiled inference: seam-free stitching, zarr layouts and input checks."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.config import ClusterConfig, Config, load_config
from activeseg.core import tiling as predict
from activeseg.core.cluster import fuse_segmentations, segment, segment_consensus
from activeseg.core.models.checkpoint import TrainedModel
from activeseg.core.models.normalization import Normalization
from activeseg.core.models.probabilistic import ProbabilisticModel
from activeseg.core.models.unet import CalibratedGroupNorm
from activeseg.core.stitching import ClusterOptions, StitchOptions, segment_volume
from activeseg.core.tiling import (
    Tiling,
    calibration_starts,
    plan_tiling,
    predict_array,
    predict_to_zarr,
)
from activeseg.core.uncertainty import mutual_information
from activeseg.errors import InputError
from activeseg.workflows import predict as predict_workflow
from activeseg.workflows.predict import write_consensus
from activeseg.workflows.project import Project

runner = CliRunner()
SHAPE = (12, 40, 36)  # not a multiple of the tiles, nor of the pooling divisor in y, x


def trained_model(kind: str = "mheads", aleatoric: bool = False) -> TrainedModel:
    """Return an untrained smoke-config model in eval mode."""
    base = load_config("smoke")
    model_config = base.model.model_copy(
        update={"kind": kind, "aleatoric": aleatoric, "in_channels": 3}
    )
    config = Config.model_validate({**base.model_dump(), "model": model_config.model_dump()})
    torch.manual_seed(0)
    model = ProbabilisticModel(config.model, seed=0).eval()
    return TrainedModel(model, config, Normalization((10.0,) * 3, (500.0,) * 3))


def read(group: zarr.Group, name: str) -> np.ndarray:
    """Return one array of a zarr group, loaded."""
    return np.asarray(zarr.open_array(group.store, path=name, mode="r")[:])


def volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 600, (3, *SHAPE)).astype(np.uint16)


def test_tiles_cover_the_volume_exactly_once() -> None:
    counts = np.zeros(SHAPE, int)
    for box in Tiling((4, 16, 16), (2, 2, 2)).boxes(SHAPE):
        counts[box] += 1
    assert np.all(counts == 1)


def test_the_default_margin_is_the_receptive_field_rounded_to_the_pooling() -> None:
    trained = trained_model()
    tiling = plan_tiling(trained, SHAPE)
    divisor = trained.model.divisor()
    assert all(m >= c for m, c in zip(tiling.margin, trained.model.context(), strict=True))
    assert all(n % d == 0 for n, d in zip(tiling.core + tiling.margin, divisor * 2, strict=True))


@pytest.mark.parametrize("kind", ["mheads", pytest.param("dropout", marks=pytest.mark.slow)])
def test_tiled_prediction_equals_one_pass(kind: str) -> None:
    trained = trained_model(kind)
    raw = volume()
    one_pass = predict_array(trained, raw, core=(12, 40, 36))
    tiled = predict_array(trained, raw, core=(6, 24, 24))
    assert one_pass.embedding.shape == (4, 4, *SHAPE)
    assert one_pass.foreground.shape == (4, *SHAPE)
    np.testing.assert_allclose(tiled.embedding, one_pass.embedding, atol=1e-4)
    np.testing.assert_allclose(tiled.foreground, one_pass.foreground, atol=1e-5)
    # without enough context, tiles do show seams: the equality above is not trivial
    seamy = predict_array(trained, raw, core=(6, 24, 24), margin=(2, 2, 2))
    assert np.abs(seamy.embedding - one_pass.embedding).max() > 1e-2


def test_inference_normalizes_with_the_statistics_of_the_volume_itself() -> None:
    trained = trained_model()
    raw = volume()
    x = torch.from_numpy(trained.normalization.apply(raw))[None]
    backbone = trained.model.nets()[0].backbone
    with torch.no_grad():
        group_norm = copy.deepcopy(backbone).train()(x)  # per-input statistics, as in training
        predict_array(trained, volume(seed=1) // 4)  # another, darker volume
        with_its_statistics = backbone(x)
        predict_array(trained, raw)  # SHAPE fits one calibration box: the whole volume
        calibrated = backbone(x)
    torch.testing.assert_close(calibrated, group_norm, atol=1e-4, rtol=1e-4)
    assert (calibrated - with_its_statistics).abs().max() > 1e-2


def test_calibration_boxes_are_few_inside_and_spread_over_the_volume() -> None:
    assert calibration_starts((12, 40, 36), (12, 40, 36)) == [[0, 0, 0]]
    starts = calibration_starts((100, 300, 300), (32, 128, 128))
    assert len(starts) == predict.CALIBRATION_BOXES
    assert starts[0] == [0, 0, 0] and starts[-1] == [68, 172, 172]
    assert len({tuple(s) for s in starts}) == len(starts)


def test_tiled_equals_one_pass_when_calibrating_on_several_boxes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(predict, "CALIBRATION_BOX", (6, 16, 16))
    trained = trained_model()
    raw = volume()
    one_pass = predict_array(trained, raw, core=(12, 40, 36))
    tiled = predict_array(trained, raw, core=(6, 24, 24))
    np.testing.assert_allclose(tiled.embedding, one_pass.embedding, atol=1e-4)
    # every prediction calibrates anew: a darker volume leaves other statistics behind
    first_layer = trained.model.nets()[0].backbone.modules()
    norm = next(m for m in first_layer if isinstance(m, CalibratedGroupNorm))
    after_first = norm.running_mean.clone()
    predict_array(trained, volume(seed=1) // 4, core=(12, 40, 36))
    assert not torch.allclose(norm.running_mean, after_first, atol=1e-3)


def test_one_pass_is_the_model_applied_to_the_zero_padded_volume() -> None:
    trained = trained_model()
    raw = volume()
    prediction = predict_array(trained, raw, core=(12, 40, 36))
    margin = plan_tiling(trained, SHAPE).margin
    padded = np.pad(
        trained.normalization.apply(raw),
        [(0, 0)] + [(m, m + (-n) % d) for m, n, d in zip(margin, SHAPE, (2, 2, 2), strict=True)],
    )
    direct = trained.model.sample(torch.from_numpy(padded)[None])
    z, y, x = (slice(m, m + n) for m, n in zip(margin, SHAPE, strict=True))
    expected = direct.embedding[:, 0, :, z, y, x].numpy()
    np.testing.assert_allclose(prediction.embedding, expected, atol=1e-5)


def test_zarr_samples_layout_matches_the_in_memory_prediction(tmp_path: Path) -> None:
    trained = trained_model(aleatoric=True)
    raw = volume()
    stored = zarr.create_array(tmp_path / "raw.zarr", data=raw, chunks=(3, 6, 20, 20))
    seen: list[tuple[int, int]] = []
    layout = predict_to_zarr(trained, stored, tmp_path / "pred.zarr", core=(6, 24, 24),
                             progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert layout == "samples"
    tiles = len(Tiling((6, 24, 24), (0, 0, 0)).boxes(SHAPE))
    assert tiles > 1 and seen == [(k, tiles) for k in range(1, tiles + 1)]
    group = zarr.open_group(tmp_path / "pred.zarr", mode="r")
    assert group.attrs["layout"] == "samples" and group.attrs["samples"] == 4
    assert (
        read(group, "foreground").shape == (4, *SHAPE)
        and read(group, "foreground").dtype == np.float16
    )
    assert read(group, "embedding").shape == (4, 4, *SHAPE)
    assert read(group, "aleatoric_var").shape == (4, *SHAPE)
    expected = predict_array(trained, raw, core=(6, 24, 24))
    np.testing.assert_allclose(read(group, "embedding"), expected.embedding, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(read(group, "foreground"), expected.foreground, atol=1e-3)


def test_zarr_moments_layout_holds_the_statistics_over_samples(tmp_path: Path) -> None:
    trained = trained_model()
    raw = volume()
    layout = predict_to_zarr(trained, raw, tmp_path / "m.zarr", sample_budget_bytes=1000)
    assert layout == "moments"
    group = zarr.open_group(tmp_path / "m.zarr", mode="r")
    assert set(group.array_keys()) == {
        "foreground_mean",
        "foreground_var",
        "embedding_mean",
        "embedding_var",
        "mutual_information",
    }
    samples = predict_array(trained, raw)
    np.testing.assert_allclose(
        read(group, "foreground_mean"), samples.foreground.mean(0), atol=1e-6
    )
    np.testing.assert_allclose(
        read(group, "embedding_var"), samples.embedding.var(0).sum(0), rtol=1e-4, atol=1e-6
    )
    assert read(group, "embedding_mean").shape == (4, *SHAPE)


def test_moments_of_an_ensemble_keep_one_mean_embedding_per_member(tmp_path: Path) -> None:
    trained = trained_model("ensemble")
    raw = volume()
    predict_to_zarr(trained, raw, tmp_path / "m.zarr", core=(6, 24, 24), sample_budget_bytes=1000)
    stored = read(zarr.open_group(tmp_path / "m.zarr", mode="r"), "embedding_mean")
    members = predict_array(trained, raw, core=(6, 24, 24)).embedding  # one sample per member
    assert stored.shape == (4, 4, *SHAPE)
    np.testing.assert_allclose(stored, members, rtol=2e-3, atol=2e-3)


def test_raw_with_the_wrong_channels_is_refused() -> None:
    with pytest.raises(InputError, match="channels"):
        predict_array(trained_model(), np.zeros((2, *SHAPE), np.uint16))
    with pytest.raises(InputError, match="4-D"):
        predict_array(trained_model(), np.zeros(SHAPE, np.uint16))


# --------------------------------------------------------------------------- the predict workflow


def _old_mean_maps(out: Path, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean maps as `predict` built them before clustering streamed: whole arrays."""

    def whole(name: str) -> np.ndarray:
        return np.asarray(zarr.open_array(out, path=name, mode="r")[...], dtype=np.float32)

    if layout == "samples":
        return whole("foreground").mean(axis=0), whole("embedding").mean(axis=0)
    return whole("foreground_mean"), whole("embedding_mean")


def _cluster_config(fg: np.ndarray, emb: np.ndarray) -> ClusterConfig:
    """Return settings that find several clusters in an untrained model's mean maps."""
    threshold = float(np.quantile(fg, 0.7))
    spread = float(emb[:, fg > threshold].std(axis=1).mean())
    return ClusterConfig(foreground_threshold=threshold, bandwidth=spread / 3, min_size=3)


@pytest.mark.parametrize("budget", [predict.SAMPLE_BUDGET_BYTES, 1000])
def test_streamed_consensus_of_one_block_is_the_one_pass_clustering(
    tmp_path: Path, budget: int
) -> None:
    trained = trained_model()
    out = tmp_path / "pred.zarr"
    layout = predict_to_zarr(trained, volume(), out, sample_budget_bytes=budget)
    fg, emb = _old_mean_maps(out, layout)
    cluster = _cluster_config(fg, emb)
    count = write_consensus(out, cluster)
    expected = segment(fg, emb, **cluster.options())
    stored = read(zarr.open_group(out, mode="r"), predict_workflow.CONSENSUS)
    np.testing.assert_array_equal(stored, expected)
    assert count == expected.max() > 1


def test_consensus_of_many_blocks_is_written_block_by_block_with_unique_ids(
    tmp_path: Path,
) -> None:
    trained = trained_model()
    out = tmp_path / "pred.zarr"
    predict_to_zarr(trained, volume(), out)
    fg, emb = _old_mean_maps(out, "samples")
    cluster = _cluster_config(fg, emb)
    blocks = StitchOptions(block=(6, 20, 18), margin=(2, 4, 4))
    count = write_consensus(out, cluster, stitch=blocks)
    stored = read(zarr.open_group(out, mode="r"), predict_workflow.CONSENSUS)
    options = ClusterOptions(**cluster.options())
    np.testing.assert_array_equal(stored, segment_volume(fg, emb, options, blocks))
    assert count == stored.max() and set(np.unique(stored)) == set(range(count + 1))
    assert not list(tmp_path.glob(".pred.zarr.blocks-*"))  # the scratch labels are gone


@pytest.mark.parametrize("layout", ["samples", "moments"])
def test_predict_fuses_the_members_of_an_ensemble_as_the_in_memory_consensus(
    smoke_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    trained = trained_model("ensemble")
    monkeypatch.setattr(predict_workflow, "latest_model_path", lambda _: tmp_path)
    monkeypatch.setattr(predict_workflow, "load_model", lambda _: trained)
    raw = tmp_path / "raw.zarr"
    zarr.create_array(raw, data=volume())
    first = predict_array(trained, volume())
    cluster = _cluster_config(first.foreground.mean(axis=0), first.embedding[0])
    config = smoke_project.config.model_copy(update={"cluster": cluster})
    project = dataclasses.replace(smoke_project, config=config)
    out = tmp_path / "pred.zarr"
    result = predict_workflow.predict_volume(project, str(raw), out, layout)
    group = zarr.open_group(out, mode="r")
    options = cluster.options()
    if layout == "samples":
        fg = read(group, "foreground").astype(np.float32)
        expected = segment_consensus(
            fg, read(group, "embedding").astype(np.float32), spaces=4, **options
        )
        mean_fg, first_member = fg.mean(axis=0), read(group, "embedding")[0].astype(np.float32)
    else:
        mean_fg, members = read(group, "foreground_mean"), read(group, "embedding_mean")
        per_member = [segment(mean_fg, m.astype(np.float32), **options) for m in members]
        expected = fuse_segmentations(np.stack(per_member), min_size=cluster.min_size)
        first_member = members[0].astype(np.float32)
    np.testing.assert_array_equal(read(group, predict_workflow.CONSENSUS), expected)
    assert result["instances"] == expected.max() > 1
    assert not np.array_equal(segment(mean_fg, first_member, **options), expected)


def test_the_uncertainty_map_is_the_mutual_information_of_the_samples(tmp_path: Path) -> None:
    trained = trained_model()
    raw = volume()
    one_pass = predict_array(trained, raw, core=(12, 40, 36))
    for budget in (predict.SAMPLE_BUDGET_BYTES, 1000):
        out = tmp_path / f"pred{budget}.zarr"
        predict_to_zarr(trained, raw, out, core=(6, 24, 24), sample_budget_bytes=budget)
        tiled = read(zarr.open_group(out, mode="r"), "mutual_information")
        expected = mutual_information(one_pass.foreground)
        np.testing.assert_allclose(tiled, expected, atol=1e-4)
        assert tiled.max() > 0.01


def _write_formats(folder: Path, raw: np.ndarray) -> dict[str, list[str]]:
    """Write raw (C, Z, Y, X) in every importable layout; return the predict arguments of each."""
    import h5py
    import tifffile

    from activeseg.core.instances import Instances
    from activeseg.data.fisbe import write_fisbe

    labels = np.zeros(raw.shape[1:], np.uint32)
    labels[2:5, 3:9, 3:9] = 1
    write_fisbe(folder / "fisbe.zarr", raw, Instances.from_labels(labels))
    group = zarr.open_group(folder / "plain.zarr", mode="w")
    group.create_array("image", data=raw)
    zarr.create_array(folder / "array.zarr", data=raw)
    tifffile.imwrite(folder / "raw.tif", np.moveaxis(raw, 0, -1))  # channels last
    with h5py.File(folder / "raw.h5", "w") as handle:
        handle["data/raw"] = raw
    return {
        "fisbe": [str(folder / "fisbe.zarr")],
        "zarr group": [str(folder / "plain.zarr"), "--raw", "image"],
        "zarr array": [str(folder / "array.zarr")],
        "tiff": [str(folder / "raw.tif")],
        "hdf5": [str(folder / "raw.h5"), "--raw", "data/raw", "--format", "hdf5"],
    }


def test_predict_reads_every_importable_format(
    smoke_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = trained_model()
    monkeypatch.setattr(predict_workflow, "latest_model_path", lambda _: tmp_path)
    monkeypatch.setattr(predict_workflow, "load_model", lambda _: trained)
    raw = volume()
    expected = predict_array(trained, raw).foreground
    for name, arguments in _write_formats(tmp_path, raw).items():
        out = tmp_path / f"pred-{name.replace(' ', '-')}.zarr"
        result = runner.invoke(
            app,
            ["predict", *arguments, "--out", str(out), "-p", str(smoke_project.root), "--json"],
        )
        assert result.exit_code == 0, (name, result.output)
        report = json.loads(result.stdout)
        assert report["layout"] == "samples" and report["uncertainty"] == "mutual_information"
        group = zarr.open_group(out, mode="r")
        np.testing.assert_allclose(read(group, "foreground"), expected, atol=1e-3, err_msg=name)
        assert read(group, predict_workflow.CONSENSUS).shape == SHAPE


def test_predict_names_what_it_cannot_read(smoke_project: Project, tmp_path: Path) -> None:
    labels_only = tmp_path / "gt.zarr"
    group = zarr.open_group(labels_only, mode="w", zarr_format=2)
    group.create_array("volumes/gt_instances", data=np.zeros((1, *SHAPE), np.uint8))
    text = tmp_path / "notes.txt"
    text.write_text("no image")
    for path, message in ((labels_only, "volumes/raw"), (text, "not a readable zarr")):
        result = runner.invoke(
            app,
            [
                "predict",
                str(path),
                "--out",
                str(tmp_path / "p.zarr"),
                "-p",
                str(smoke_project.root),
            ],
        )
        assert result.exit_code == 2 and message in result.output, result.output


def test_the_default_core_shrinks_until_a_tile_fits_the_memory_budget() -> None:
    # the flylight U-Net: a receptive-field margin of 64, 16 full-resolution channels
    assert predict._fit_budget((32, 128, 128), (64, 64, 64), (8, 8, 8), 16) == (32, 64, 64)
    # the demo U-Net's tile fits as it is
    assert predict._fit_budget((32, 128, 128), (14, 28, 28), (4, 4, 4), 16) == (32, 128, 128)
    # never below the pooling divisor, however large the margin
    assert predict._fit_budget((8, 8, 8), (512, 512, 512), (8, 8, 8), 16) == (8, 8, 8)
    trained = trained_model()
    assert plan_tiling(trained, SHAPE, core=(6, 24, 24)).core == (6, 24, 24)  # asked: kept


def test_inference_runs_on_the_callers_threads_not_the_checkpoints() -> None:
    from activeseg.workflows.score import analyse_crop

    base = trained_model()
    saved = base.config.train.model_copy(update={"threads": 3})  # saved where cores abound
    trained = TrainedModel(
        base.model, base.config.model_copy(update={"train": saved}), base.normalization
    )
    seen: list[int] = []
    conv = next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    predict_array(trained, volume())
    assert set(seen) == {3}  # no caller's count: the checkpoint's
    seen.clear()
    config = load_config("smoke")
    config = config.model_copy(update={"train": config.train.model_copy(update={"threads": 1})})
    analyse_crop(trained, volume(), config)  # the project's (a Dask worker's) count wins
    assert seen and set(seen) == {1}


def test_a_crop_is_predicted_in_one_pass_without_margin() -> None:
    from activeseg.workflows.score import analyse_crop

    trained = trained_model()
    inputs: list[tuple[int, ...]] = []
    conv = next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda _, args, out: inputs.append(tuple(args[0].shape[2:])))
    crop = volume()[:, :8, :16, :16]  # a multiple of the pooling divisor
    analyse_crop(trained, crop, trained.config)
    # the crop as a training patch (calibration, then one pass), with no receptive field of
    # zeros around it
    assert inputs and set(inputs) == {(8, 16, 16)}


def test_a_crop_over_the_tile_budget_is_tiled_with_margins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = trained_model()
    width = trained.config.model.widths[0]
    monkeypatch.setattr(predict, "TILE_FEATURE_BUDGET", width * 8 * 16 * 16)
    tiling = predict.crop_tiling(trained, (8, 32, 32))
    assert tiling.margin != (0, 0, 0) and tiling == plan_tiling(trained, (8, 32, 32))
    assert predict.crop_tiling(trained, (8, 16, 16)) == Tiling((8, 16, 16), (0, 0, 0))
