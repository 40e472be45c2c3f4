"""`activeseg evaluate` on the real FlyLight crop: itself is perfect, a perturbed copy is not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_predict import trained_model
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.config import ClusterConfig, EvaluateConfig
from activeseg.core import metrics
from activeseg.core.instances import Instances
from activeseg.core.streaming_metrics import PAVPU_QUANTILES, UncertaintyTables
from activeseg.data.fisbe import read_fisbe, write_fisbe
from activeseg.data.synthetic import generate_mcfo
from activeseg.workflows import evaluate
from activeseg.workflows.importing import import_volume
from activeseg.workflows.project import Project

runner = CliRunner()


def _evaluate(*args: str) -> dict[str, float]:
    result = runner.invoke(app, ["evaluate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_flylight_ground_truth_against_itself_is_perfect(flylight_zarr: Path) -> None:
    scores = _evaluate(str(flylight_zarr), str(flylight_zarr))
    assert scores["AP50"] == scores["avF1"] == scores["C"] == scores["S"] == 1.0
    assert scores["FS"] == scores["FM"] == 0
    assert scores["VOI_split"] == scores["VOI_merge"] == scores["ARAND"] == 0.0
    assert scores["n_pred"] == scores["n_gt"] == 3


def test_merging_two_flylight_neurons_costs_a_false_merge(
    flylight_zarr: Path, tmp_path: Path
) -> None:
    truth = read_fisbe(flylight_zarr)
    merged = truth.instances.labels.copy()
    merged[merged == 2] = 1  # neurons 1 and 2 become one prediction
    pred = tmp_path / "merged.zarr"
    zarr.open_group(pred, mode="w").create_array("labels", data=merged)
    scores = _evaluate(str(pred), str(flylight_zarr))
    assert scores["FM"] == 1
    assert scores["n_pred"] == 2
    assert scores["avF1"] < 1.0
    assert scores["VOI_merge"] > 0.0


def test_dropping_a_neuron_lowers_coverage(flylight_zarr: Path, tmp_path: Path) -> None:
    truth = read_fisbe(flylight_zarr)
    ids, stack = truth.instances.to_stack()
    pred = tmp_path / "two.zarr"
    write_fisbe(pred, truth.raw, Instances.from_stack(stack[:2], ids[:2]))
    scores = _evaluate(str(pred), str(flylight_zarr))
    assert scores["n_pred"] == 2
    assert np.isclose(scores["C"], 2 / 3, atol=0.02)
    assert scores["avF1"] < 1.0


def _prediction_with_samples(path: Path, truth: np.ndarray) -> None:
    """Write a predict-like zarr: the truth plus a spurious neuron that one sample of two sees."""
    labels = truth.copy()
    labels[:, :4, :4] = 3
    foreground = np.stack([truth > 0, labels > 0]).astype(np.float32) * 0.9 + 0.05
    embedding = np.zeros((2, 2, *truth.shape), np.float32)
    embedding[:, 0][:, truth == 2] = 3.0  # neurons and the spurious one lie 3 apart
    embedding[:, 1][:, labels == 3] = 3.0
    group = zarr.open_group(path, mode="w")
    group.create_array("labels", data=labels)
    group.create_array("foreground", data=foreground)
    group.create_array("embedding", data=embedding)


def test_uncertainty_evaluation_adds_its_metrics_and_draws_the_reliability_diagram(
    tmp_path: Path,
) -> None:
    truth = np.zeros((4, 16, 16), np.uint32)
    truth[:, 6:9, 2:14] = 1
    truth[:, 11:14, 2:14] = 2
    gt = tmp_path / "gt.zarr"
    zarr.open_group(gt, mode="w").create_array("labels", data=truth)
    pred = tmp_path / "pred.zarr"
    _prediction_with_samples(pred, truth)
    picture = tmp_path / "calibration.png"
    scores = _evaluate(str(pred), str(gt), "--uncertainty", "--reliability", str(picture))
    assert scores["n_pred"] == 3 and scores["AP50"] < 1.0
    # The samples disagree exactly on the spurious neuron: it is the wrong voxels and the
    # wrong instance, and the most uncertain ones.
    assert scores["voxel_error_auroc"] == 1.0
    assert scores["instance_error_auroc"] == 1.0
    assert scores["p_uncertain_given_inaccurate"] == 1.0
    for key in ("PAvPU", "p_accurate_given_certain", "ECE"):
        assert 0.0 <= scores[key] <= 1.0
    assert scores["reliability_plot"] == str(picture)
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_a_reliability_diagram_needs_the_uncertainty_evaluation(tmp_path: Path) -> None:
    truth = np.ones((2, 4, 4), np.uint32)
    gt = tmp_path / "gt.zarr"
    zarr.open_group(gt, mode="w").create_array("labels", data=truth)
    answer = runner.invoke(app, ["evaluate", str(gt), str(gt), "--reliability", "x.png"])
    assert answer.exit_code != 0
    assert "needs --uncertainty" in answer.output
    assert not (tmp_path / "x.png").exists()


def _labels_in_every_format(folder: Path, truth: Instances) -> dict[str, list[str]]:
    """Write ground truth that holds only labels, in every format; return evaluate's arguments."""
    import h5py
    import tifffile

    ids, stack = truth.to_stack()
    fisbe = folder / "gt-fisbe.zarr"  # FISBe layout without volumes/raw
    group = zarr.open_group(fisbe, mode="w", zarr_format=2)
    group.create_array("volumes/gt_instances", data=(stack * np.arange(1, len(ids) + 1)[:, None,
                       None, None]).astype(np.uint8))  # fmt: skip
    zarr.create_array(folder / "gt-array.zarr", data=truth.labels)
    named = zarr.open_group(folder / "gt-group.zarr", mode="w")
    named.create_array("annotations/neurons", data=truth.labels.astype(np.uint16))
    tifffile.imwrite(folder / "gt.tif", truth.labels)
    tifffile.imwrite(folder / "gt-stack.tiff", stack.astype(np.uint8))  # one mask per neuron
    with h5py.File(folder / "gt.h5", "w") as handle:
        handle["seg/neurons"] = truth.labels
    return {
        "fisbe without raw": [str(fisbe)],
        "zarr array": [str(folder / "gt-array.zarr")],
        "zarr group": [str(folder / "gt-group.zarr"), "--labels", "annotations/neurons"],
        "tiff": [str(folder / "gt.tif")],
        "tiff stack": [str(folder / "gt-stack.tiff")],
        "hdf5": [str(folder / "gt.h5"), "--labels", "seg/neurons"],
    }


def test_ground_truth_that_holds_only_labels_is_read_in_every_format(
    flylight_zarr: Path, tmp_path: Path
) -> None:
    truth = read_fisbe(flylight_zarr).instances
    single = Instances.from_labels(truth.labels)  # the formats without overlaps
    for name, arguments in _labels_in_every_format(tmp_path, single).items():
        scores = _evaluate(str(flylight_zarr), *arguments)
        assert scores["n_gt"] == 3, name
        # the FlyLight neurons overlap: against their one-label-per-voxel image the
        # prediction (which holds the overlaps) is nearly, not exactly, perfect
        assert scores["avF1"] > 0.9 and scores["FM"] == scores["FS"] == 0, name
        path, *key = arguments
        as_prediction = ["--pred-labels", key[1]] if key else []
        assert _evaluate(path, *arguments, *as_prediction)["avF1"] == 1.0, name


def test_a_label_file_without_the_named_dataset_is_refused(tmp_path: Path) -> None:
    gt = tmp_path / "gt.zarr"
    zarr.open_group(gt, mode="w").create_array("other", data=np.ones((2, 4, 4), np.float32))
    pred = tmp_path / "pred.zarr"
    zarr.create_array(pred, data=np.ones((2, 4, 4), np.uint32))
    for extra, message in (([], "--labels"), (["--labels", "missing"], "no dataset 'missing'"),
                           (["--labels", "other"], "integers")):  # fmt: skip
        answer = runner.invoke(app, ["evaluate", str(pred), str(gt), *extra])
        assert answer.exit_code == 2 and message in answer.output, answer.output


def test_a_large_prediction_is_judged_slab_by_slab_like_the_whole_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = np.zeros((20, 16, 16), np.uint32)  # more z-planes than one slab
    truth[:, 6:9, 2:14] = 1
    truth[:, 11:14, 2:14] = 2
    gt = tmp_path / "gt.zarr"
    zarr.open_group(gt, mode="w").create_array("labels", data=truth)
    pred = tmp_path / "pred.zarr"
    _prediction_with_samples(pred, truth)
    whole = _evaluate(str(pred), str(gt), "--uncertainty")
    monkeypatch.setattr(evaluate, "IN_MEMORY_BYTES", 0)
    picture = tmp_path / "calibration.png"
    slabs = _evaluate(str(pred), str(gt), "--uncertainty", "--reliability", str(picture))
    for key in ("voxel_error_auroc", "PAvPU", "p_accurate_given_certain",
                "p_uncertain_given_inaccurate", "ECE", "AP50", "avF1"):  # fmt: skip
        assert slabs[key] == pytest.approx(whole[key], abs=1e-3), key
    assert slabs["instance_error_auroc"] is None and "instance_risk" in slabs  # NaN: null
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_uncertainty_tables_summed_over_slabs_match_the_whole_volume_metrics() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (10, 12, 12)).astype(np.uint32)
    mapped = np.where(rng.random(truth.shape) < 0.2, 0, truth)
    mi = np.clip(rng.random(truth.shape) * 0.5 + 0.4 * (mapped != truth), 0, 1)
    fg = rng.random(truth.shape)
    tables = UncertaintyTables()
    for z0 in range(0, 10, 3):
        part = slice(z0, z0 + 3)
        tables.add(mapped[part], truth[part], mi[part], fg[part], mapped[part])
    wrong = mapped != truth
    assert tables.voxel_auroc() == pytest.approx(metrics.auroc(mi, wrong), abs=1e-4)
    np.testing.assert_allclose(
        tables.thresholds(),
        np.quantile(mi, PAVPU_QUANTILES),
        atol=1e-3,  # 1440 voxels
    )
    relevant = (mapped > 0) | (truth > 0)
    expected = metrics.pavpu(~wrong, mi, tables.thresholds(), relevant=relevant)
    np.testing.assert_allclose(tables.pavpu().pavpu, expected.pavpu)
    assert tables.ece() == pytest.approx(metrics.ece(fg, truth > 0), abs=1e-12)


def _validating(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """Return the project with a small validation volume, a trained model standing in for its
    checkpoint and a clustering that finds that model's instances."""
    volume = generate_mcfo((16, 48, 48), 3, seed=2)
    write_fisbe(tmp_path / "val.zarr", volume.raw, volume.instances)
    import_volume(project, tmp_path / "val.zarr", "fisbe", split="val")
    trained = trained_model()
    monkeypatch.setattr(evaluate, "load_model", lambda _: trained)
    cluster = ClusterConfig(foreground_threshold=0.5, bandwidth=0.1, min_size=20)
    return dataclasses.replace(
        project, config=project.config.model_copy(update={"cluster": cluster})
    )


def test_round_evaluation_of_a_large_volume_streams_and_scores_like_the_whole_volume(
    smoke_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _validating(smoke_project, tmp_path, monkeypatch)
    whole = evaluate.evaluate_project(project, tmp_path)
    monkeypatch.setattr(evaluate, "IN_MEMORY_BYTES", 0)
    slabs = evaluate.evaluate_project(project, tmp_path)
    # the streamed samples are stored as float16: the same instances up to rounding
    assert whole["n_pred"] > 0
    for key in ("n_pred", "n_gt", "AP50", "voxel_error_auroc"):
        assert slabs[key] == pytest.approx(whole[key], abs=0.02), key
    assert np.isnan(slabs["instance_error_auroc"])
    assert not list(smoke_project.root.glob(".evaluate-*"))


def test_round_evaluation_follows_the_fisbe_protocol_when_the_config_says_so(
    smoke_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _validating(smoke_project, tmp_path, monkeypatch).config
    fisbe = plain.model_copy(update={"evaluate": EvaluateConfig(protocol="fisbe")})
    scores = {
        name: evaluate.evaluate_project(dataclasses.replace(smoke_project, config=config), tmp_path)
        for name, config in (("plain", plain), ("fisbe", fisbe))
    }
    # this small volume's predicted fragments are all under FISBe's 800 voxels: none counts
    assert scores["plain"]["n_pred"] > 0 and scores["fisbe"]["n_pred"] == 0
    assert scores["fisbe"]["n_gt"] == scores["plain"]["n_gt"]
