"""The command line through typer's runner: help everywhere, JSON contracts, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from activeseg import __version__
from activeseg.cli import app
from activeseg.cli.render import print_ranking
from activeseg.pool.records import ScoreInfo
from activeseg.workflows.history import RankedCrop, RoundSummary, StageTiming
from activeseg.workflows.simulate import create_demo_project
from activeseg.workflows.status import ProjectStatus, VolumeSummary

runner = CliRunner()


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a command group (typer vendors its own click)
            found += _commands(cmd, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_the_main_commands_exist() -> None:
    expected = {
        "init",
        "synth",
        "import",
        "status",
        "train",
        "predict",
        "round",
        "history",
        "show",
        "simulate",
        "demo",
        "evaluate",
        "score",
        "push",
        "ingest",
    }
    grouped = {("labelstudio", "serve"), ("labelstudio", "annotate")}
    assert {(name,) for name in expected} | grouped <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_init_synth_import_status(tmp_path: Path, flylight_zarr: Path) -> None:
    project = tmp_path / "p"
    assert runner.invoke(app, ["init", str(project), "--config", "smoke"]).exit_code == 0
    vol = tmp_path / "s.zarr"
    result = runner.invoke(
        app, ["synth", str(vol), "--shape", "16", "64", "64", "--neurons", "3", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["import", str(vol), str(flylight_zarr), "-p", str(project)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["status", "--json", "-p", str(project)])
    status = json.loads(result.stdout)
    assert [(v["name"], v["shape"], v["split"]) for v in status["volumes"]] == [
        ("s", [16, 64, 64], "pool"),
        ("flylight", [50, 50, 50], "pool"),
    ]
    assert status["crops"]["unlabeled"] > 0
    assert status["crops"]["labeled"] == 0


def test_bad_input_exits_2_with_a_message_naming_the_file(tmp_path: Path) -> None:
    project = tmp_path / "p"
    runner.invoke(app, ["init", str(project), "--config", "smoke"])
    missing = tmp_path / "missing.zarr"
    result = runner.invoke(app, ["import", str(missing), "-p", str(project)])
    assert result.exit_code == 2
    assert "missing.zarr" in result.stderr
    assert "Traceback" not in result.output


def test_no_project_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACTIVESEG_PROJECT", raising=False)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "activeseg init" in result.stderr


def test_init_refuses_an_existing_project(tmp_path: Path) -> None:
    runner.invoke(app, ["init", str(tmp_path / "p")])
    result = runner.invoke(app, ["init", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert "already holds" in result.stderr


def test_importing_the_cli_loads_no_workflow() -> None:
    # `activeseg --help` stays fast: the commands import the library when they run.
    code = (
        "import sys, activeseg.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('activeseg.workflows', 'torch'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a smoke project whose round 0 (model-free) ran up to select through the CLI."""
    root = tmp_path_factory.mktemp("cli") / "project"
    create_demo_project(root, "smoke").engine.dispose()
    result = runner.invoke(app, ["score", "--json", "-p", str(root)])
    assert result.exit_code == 0, result.output
    (root / "score.json").write_text(result.stdout)
    (root / "score.err").write_text(result.stderr)
    return root


def _json(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_score_json_ranks_every_unlabeled_crop_without_descriptors(scored: Path) -> None:
    ranking = json.loads((scored / "score.json").read_text())  # stdout: the JSON alone
    progress = (scored / "score.err").read_text()
    assert "✓ ingest" in progress and "✓ select" in progress  # stage lines go to stderr
    status = _json("status", "-p", str(scored))
    assert len(ranking) == status["crops_by_split"]["pool"]["unlabeled"]
    assert [row["rank"] for row in ranking] == list(range(len(ranking)))
    assert {tuple(row) for row in ranking} == {("crop_id", "rank", "score", "selected")}
    assert sum(row["selected"] for row in ranking) == 2  # the smoke config's batch size


def test_score_table_shows_the_top_crops_and_model_free_parts_as_dashes(scored: Path) -> None:
    result = runner.invoke(app, ["score", "--top", "3", "-p", str(scored)])
    assert result.exit_code == 0, result.output
    assert "round 0: diverse" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.count("–") == 3]
    assert len(rows) == 3


def test_round_history_and_show_keep_their_json_keys(scored: Path) -> None:
    finished = _json("round", "-p", str(scored))
    assert set(finished) == {
        "round", "strategy", "batch_size", "checkpoint", "metrics", "top", "stages"
    }  # fmt: skip
    assert [s["name"] for s in finished["stages"]][-1] == "push"
    assert {"status", "outputs", "error"} <= set(finished["stages"][0])
    shown = _json("show", "0", "--top", "2", "-p", str(scored))
    assert set(shown) == set(finished) | {"config"}
    assert "acquisition:" in shown["config"]
    assert [p["rank"] for p in shown["top"]] == [0, 1]
    assert set(shown["top"][0]) == {
        "crop_id", "volume", "origin", "rank", "selected", "score", "parts", "flagged",
        "slices", "why_slices",
    }  # fmt: skip
    assert isinstance(shown["top"][0]["origin"], list)
    assert shown["top"][0]["slices"] and "evenly spaced" in shown["top"][0]["why_slices"]
    (row,) = _json("history", "-p", str(scored))
    assert set(row) == {
        "round", "strategy", "labeled_crops", "trained_on", "crops_added",
        "correction_fraction", "training_seconds", "metrics", "stages", "finished", "abandoned",
        "spent", "outlook",
    }  # fmt: skip
    assert (row["round"], row["crops_added"], row["finished"]) == (0, 2, True)
    assert set(row["stages"]["push"]) == {"status", "seconds"}


def test_show_prints_the_picks_and_the_config(scored: Path) -> None:
    result = runner.invoke(app, ["show", "0", "--top", "1", "-p", str(scored)])
    assert result.exit_code == 0, result.output
    assert "round 0: strategy diverse, batch 2, model None" in result.stdout
    assert "config snapshot:" in result.stdout
    assert "[0, " in result.stdout  # origin and slices print as lists


def test_status_record_counts_crops_over_splits() -> None:
    status = ProjectStatus(
        project=Path("/p"),
        volumes=(VolumeSummary("v", (2, 3, 4), "pool", 1, True),),
        crops_by_split={"pool": {"unlabeled": 3, "labeled": 1}, "val": {"unlabeled": 2}},
        crop_statuses=("unlabeled", "labeled"),
        rounds=4,
    )
    data = status.as_dict()
    assert data["crops"] == {"unlabeled": 5, "labeled": 1}
    assert data["volumes"] == [
        {"name": "v", "shape": [2, 3, 4], "split": "pool", "channels": 1, "has_ground_truth": True}
    ]
    assert (data["project"], data["rounds"]) == ("/p", 4)
    json.dumps(data)  # JSON-able without a fallback


def test_history_row_is_keyed_round_in_json() -> None:
    row = RoundSummary(
        3, "bald", 6, 6, 2, 0.1, 1.5, {"AP50": 0.5}, {"train": StageTiming("done", 1.5)}, True
    )
    data = row.as_dict()
    assert data["round"] == 3 and "number" not in data
    assert data["stages"] == {"train": {"status": "done", "seconds": 1.5}}


def test_ranked_crop_drops_the_descriptor_and_prints_flagged_instances(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flagged = [{"id": 7, "flags": ["merge", "split"]}]
    parts = {"bald": 0.25, "descriptor": [1.0, 2.0], "flagged": flagged}
    crop = RankedCrop.of(ScoreInfo(crop_id=4, score=0.25, rank=0, selected=True, parts=parts))
    assert crop.as_dict() == {
        "crop_id": 4, "rank": 0, "score": 0.25, "selected": True, "bald": 0.25, "flagged": flagged
    }  # fmt: skip
    print_ranking([crop], title="round 5: bald")
    out = capsys.readouterr().out
    assert "#7 merge/split" in out and "0.250" in out and "round 5: bald" in out


def test_version_and_help_grouped_by_task() -> None:
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"activeseg {__version__}"
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).stdout
    panels = ("Set up", "The loop", "Inspection", "Label Studio")
    assert all(f"─ {panel} " in listing for panel in panels)
    loop_panel = listing.split("─ The loop ")[1].split("─ Inspection ")[0]
    assert "round" in loop_panel and "history" not in loop_panel


def test_a_typo_in_a_fixed_choice_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "vol", "--out", str(tmp_path / "o.zarr"),
                                 "--samples", "sample", "-p", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "sample" in result.output
    assert not (tmp_path / "o.zarr").exists()


def test_verbose_logs_activeseg_only(tmp_path: Path) -> None:
    import logging

    runner.invoke(app, ["-v", "init", str(tmp_path / "p")])
    assert logging.getLogger("activeseg").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.WARNING
