"""The command line through typer's runner: help everywhere, JSON contracts, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from activeseg.cli import app

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
