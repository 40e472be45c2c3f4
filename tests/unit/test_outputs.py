"""Commands that write a new zarr never destroy what is already there without --force, and
never a project's files even with it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.workflows.project import Project

runner = CliRunner()
SYNTH = ["--shape", "8", "32", "32", "--neurons", "2"]


def _digest(root: Path) -> str:
    """Return a hash of every file's path and bytes below root."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_synth_refuses_a_folder_that_holds_something(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("months of work")
    before = _digest(tmp_path)
    result = runner.invoke(app, ["synth", str(folder), *SYNTH])
    assert result.exit_code == 2 and "--force" in result.output
    forced = runner.invoke(app, ["synth", str(folder), *SYNTH, "--force"])
    assert forced.exit_code == 2 and "not a zarr store" in forced.output
    assert _digest(tmp_path) == before


def test_synth_into_a_project_is_refused_even_with_force(smoke_project: Project) -> None:
    before = _digest(smoke_project.root)
    for target in (smoke_project.root, smoke_project.root / "volumes"):
        target.mkdir(exist_ok=True)
        (target / "zarr.json").touch()  # looks like a zarr store: still the project's
        before = _digest(smoke_project.root)
        result = runner.invoke(app, ["synth", str(target), *SYNTH, "--force"])
        assert result.exit_code == 2 and "inside the activeseg project" in result.output
        assert _digest(smoke_project.root) == before


@pytest.mark.parametrize("force", [False, True])
def test_synth_replaces_an_existing_zarr_only_with_force(tmp_path: Path, force: bool) -> None:
    out = tmp_path / "v.zarr"
    assert runner.invoke(app, ["synth", str(out), *SYNTH, "--seed", "1"]).exit_code == 0
    before = _digest(out)
    result = runner.invoke(app, ["synth", str(out), *SYNTH, "--seed", "2", *(["--force"] * force)])
    assert result.exit_code == (0 if force else 2)
    assert (_digest(out) != before) == force


def test_predict_refuses_a_non_empty_out_before_anything_runs(
    smoke_project: Project, tmp_path: Path
) -> None:
    out = tmp_path / "pred.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("a colleague's result")
    result = runner.invoke(app, ["predict", "v0", "--out", str(out), "-p", str(smoke_project.root)])
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "a colleague's result"
