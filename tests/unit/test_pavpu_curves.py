"""Uncertainty evaluation per Mukhoti & Gal: a threshold chosen on validation, applied to test,
and PAvPU with its two conditionals drawn over the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from activeseg.workflows.evaluate import (
    choose_pavpu_threshold,
    evaluate_files,
    pavpu_curve,
    uncertainty_report,
)


def two_neurons() -> np.ndarray:
    truth = np.zeros((4, 16, 16), np.uint32)
    truth[:, 2:5, 2:14] = 1
    truth[:, 10:13, 2:14] = 2
    return truth


def test_curves_run_over_the_threshold_and_the_validation_choice_is_applied() -> None:
    truth = two_neurons()
    consensus = truth.copy()
    consensus[:, 10:13, 2:14] = 1  # a false merge: neuron 2's voxels are wrong
    uncertainty = np.where(truth == 2, 0.8, 0.1).astype(np.float32)
    curve = pavpu_curve(consensus, truth, uncertainty)
    assert len(curve.thresholds) >= 2 and np.all(np.diff(curve.thresholds) > 0)
    # lowest threshold: every patch uncertain; the best separates the wrong neuron exactly
    assert curve.p_uncertain_given_inaccurate[0] == 1.0
    chosen = choose_pavpu_threshold(curve)
    assert 0.1 <= chosen < 0.8
    assert float(np.nanmax(curve.pavpu)) == 1.0
    foreground = np.stack([truth > 0, truth > 0]).astype(np.float32) * 0.9 + 0.05
    report = uncertainty_report(consensus, truth, foreground, [], threshold=0.95)
    assert report["PAvPU_threshold"] == pytest.approx(0.95)
    assert report["PAvPU_threshold_from"] == "validation"
    assert report["p_uncertain_given_inaccurate"] == 0.0  # nothing is above 0.95


def test_evaluate_draws_the_curves(tmp_path: Path) -> None:
    truth = two_neurons()
    gt = tmp_path / "gt.zarr"
    zarr.open_group(gt, mode="w").create_array("labels", data=truth)
    labels = truth.copy()
    labels[:, 6:9, 2:8] = 3  # a spurious neuron only one of two samples sees
    group = zarr.open_group(tmp_path / "pred.zarr", mode="w")
    group.create_array("labels", data=labels)
    group.create_array(
        "foreground", data=np.stack([truth > 0, labels > 0]).astype(np.float32) * 0.9 + 0.05
    )
    embedding = np.zeros((2, 2, *truth.shape), np.float32)
    embedding[:, 0][:, truth == 2] = 3.0
    embedding[:, 1][:, labels == 3] = 3.0
    group.create_array("embedding", data=embedding)
    picture = tmp_path / "curves.png"
    result = evaluate_files(
        str(tmp_path / "pred.zarr"), str(gt), None, uncertainty=True, curves_plot=picture
    )
    assert result["curves_plot"] == str(picture)
    assert picture.read_bytes().startswith(b"\x89PNG")
