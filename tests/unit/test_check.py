"""`activeseg check`: finds what is inconsistent between the ledger and the files."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.check import check_project
from activeseg.workflows.importing import import_volume
from activeseg.workflows.project import Project

runner = CliRunner()


def _imported(project: Project, flylight_zarr: Path) -> Project:
    import_volume(project, flylight_zarr, "fisbe", as_labels=True)
    return project


def test_a_fresh_import_is_consistent(smoke_project: Project, flylight_zarr: Path) -> None:
    report = check_project(_imported(smoke_project, flylight_zarr))
    assert report.consistent and report.problems == []
    assert report.checked["volumes"] == 1 and report.checked["labeled crops"] > 0
    result = runner.invoke(app, ["check", "-p", str(smoke_project.root)])
    assert result.exit_code == 0, result.output


def test_missing_labels_and_volumes_are_reported(
    smoke_project: Project, flylight_zarr: Path
) -> None:
    project = _imported(smoke_project, flylight_zarr)
    with project.session() as session:
        crop = pool_volumes.list_crops(session, status="labeled")[0]
        (volume,) = pool_volumes.list_volumes(session)
    assert crop.label_path is not None
    shutil.rmtree(project.resolve(crop.label_path))
    shutil.rmtree(project.resolve(volume.path) / "0")
    kinds = {(p.kind, p.where) for p in check_project(project).problems}
    assert ("labels unreadable", f"crop {crop.id}") in kinds
    assert ("volume unreadable", volume.name) in kinds
    result = runner.invoke(app, ["check", "--json", "-p", str(project.root)])
    assert result.exit_code == 1 and '"consistent": false' in result.output


def test_repair_removes_partial_writes_and_nothing_else(
    smoke_project: Project, flylight_zarr: Path
) -> None:
    project = _imported(smoke_project, flylight_zarr)
    partial = project.volumes_dir / ".x.zarr.123-abc.partial"
    partial.mkdir()
    before = sorted(p.name for p in project.volumes_dir.iterdir())
    found = check_project(project)
    assert not found.consistent and [p.kind for p in found.problems] == ["partial write"]
    assert partial.exists()
    repaired = check_project(project, repair=True)
    assert repaired.consistent and not partial.exists()
    assert sorted(p.name for p in project.volumes_dir.iterdir()) == sorted(
        set(before) - {partial.name}
    )


def test_a_crop_queued_without_an_open_task_is_reported_and_repaired(
    smoke_project: Project, flylight_zarr: Path
) -> None:
    project = _imported(smoke_project, flylight_zarr)
    with project.session() as session:
        crop = pool_volumes.list_crops(session)[0]
        pool_volumes.set_crop_status(session, crop.id, "queued")  # e.g. a task deleted by hand
    found = check_project(project)
    assert [(p.kind, p.where) for p in found.problems] == [
        ("crop queued without a task", f"crop {crop.id}")
    ]
    assert check_project(project, repair=True).consistent
    with project.session() as session:
        assert pool_volumes.get_crop(session, crop.id).status == "unlabeled"
    assert check_project(project).problems == []
