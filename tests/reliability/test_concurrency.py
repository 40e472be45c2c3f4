"""Writers at the same time: two ingests, ingest during a round, two imports of one name, two
trainings. Each finishes or is refused cleanly, and the ledger and files agree afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from activeseg.data.volumes import CropLabels, read_crop_labels, write_crop_labels
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.check import check_project
from activeseg.workflows.project import Project, open_project
from activeseg.workflows.simulate import create_demo_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

INGEST_FILES = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from activeseg.workflows.ingest import ingest_file
    from activeseg.workflows.project import open_project

    project = open_project(Path(sys.argv[1]))
    for crop, source in zip(sys.argv[2::2], sys.argv[3::2]):
        ingest_file(project, int(crop), Path(source))
    """
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_project(tmp_path_factory.mktemp("conc") / "template", "smoke").root


def _copy(template: Path, tmp_path: Path) -> Project:
    shutil.copytree(template, tmp_path / "p")
    return open_project(tmp_path / "p")


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def _label_sources(project: Project, tmp_path: Path, tag: int) -> list[str]:
    """Return (crop id, label file) argument pairs for every pool crop, labels by ``tag``."""
    with project.session() as session:
        crops = pool_volumes.list_crops(session, split="pool")
    args = []
    for crop in crops:
        labels = np.zeros(crop.shape, np.uint32)
        labels[:, :3, :3] = tag
        source = tmp_path / f"labels-{tag}-{crop.id}.zarr"
        write_crop_labels(source, CropLabels(labels, np.ones(crop.shape, bool),
                                             np.zeros((0, 4), np.int64)))  # fmt: skip
        args += [str(crop.id), str(source)]
    return args


def _assert_consistent(project: Project) -> None:
    report = check_project(project)
    assert report.consistent, report.problems
    with project.session() as session:
        for crop in pool_volumes.list_crops(session, status="labeled"):
            read_crop_labels(project.resolve(str(crop.label_path)))


def test_two_ingests_at_once_both_land_readably(template: Path, tmp_path: Path) -> None:
    project = _copy(template, tmp_path)
    runs = [
        _start("-c", INGEST_FILES, str(project.root), *_label_sources(project, tmp_path, tag))
        for tag in (1, 2)
    ]
    for run in runs:
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out
    _assert_consistent(project)
    with project.session() as session:
        labeled = pool_volumes.list_crops(session, status="labeled", split="pool")
    values = {int(read_crop_labels(project.resolve(str(c.label_path))).labels.max())
              for c in labeled}  # fmt: skip
    assert labeled and values <= {1, 2}


def test_an_ingest_during_a_round_waits_its_turn(template: Path, tmp_path: Path) -> None:
    project = _copy(template, tmp_path)
    round_run = _start("-m", "activeseg", "round", "-p", str(project.root))
    ingest = _start("-c", INGEST_FILES, str(project.root), *_label_sources(project, tmp_path, 3))
    for run in (round_run, ingest):
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out
    _assert_consistent(project)


def test_two_imports_of_one_name_one_wins_and_nothing_is_left(
    template: Path, tmp_path: Path
) -> None:
    project = _copy(template, tmp_path)
    source = project.root / "sources" / "pool0.zarr"
    runs = [_start("-m", "activeseg", "import", str(source), "--name", "twin",
                   "-p", str(project.root)) for _ in range(2)]  # fmt: skip
    outs = [run.communicate(timeout=600)[0] for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], outs
    assert any("already in this project" in out for out in outs)
    assert not [p for p in project.volumes_dir.iterdir() if p.name.endswith(".partial")]
    _assert_consistent(project)


def test_two_trainings_at_once_each_get_their_checkpoint(template: Path, tmp_path: Path) -> None:
    project = _copy(template, tmp_path)
    _start("-m", "activeseg", "round", "-p", str(project.root)).communicate(timeout=600)
    _start("-m", "activeseg", "round", "--until", "ingest", "-p", str(project.root)).communicate(
        timeout=600
    )
    runs = [_start("-m", "activeseg", "train", "-p", str(project.root)) for _ in range(2)]
    for run in runs:
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out
    with project.session() as session:
        paths = [c.path for c in pool_rounds.recent_checkpoints(session)]
    assert len(set(paths)) == len(paths) >= 2
    _assert_consistent(project)
