"""Shared fixtures: the real FlyLight crop (copied, it is read-only) and small projects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from activeseg.workflows.project import Project, init_project

FLYLIGHT = Path(__file__).resolve().parent / "data/flylight/JRC_SS05008-20160318_24_B2_crop.zarr"


@pytest.fixture
def flylight_zarr(tmp_path: Path) -> Path:
    """Return a writable copy of the real FlyLight MCFO crop (FISBe layout)."""
    if not FLYLIGHT.exists():
        pytest.fail(f"the FlyLight test crop is missing: {FLYLIGHT}")
    return Path(shutil.copytree(FLYLIGHT, tmp_path / "flylight.zarr"))


@pytest.fixture
def smoke_project(tmp_path: Path) -> Project:
    """Return a fresh, empty project using the tiny smoke config."""
    return init_project(tmp_path / "project", "smoke")
