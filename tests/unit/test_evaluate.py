"""`activeseg evaluate` on the real FlyLight crop: itself is perfect, a perturbed copy is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.data.fisbe import read_fisbe, write_fisbe
from activeseg.data.instances import Instances

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
