"""The wheel carries configs and migrations: an installed activeseg works without a checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_and_creates_and_upgrades_a_project(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", dist, ROOT, cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("activeseg-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin/pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # The dependencies come from the test environment, whose own activeseg (an editable
    # install of the checkout) is not on this path: only its .pth hook would add it.
    site = Path(_run(venv / "bin/python", "-c", "import site; print(site.getsitepackages()[0])",
                     cwd=tmp_path).strip())  # fmt: skip
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = _run(venv / "bin/python", "-c", "import activeseg; print(activeseg.__file__)",
                 cwd=tmp_path)  # fmt: skip
    assert Path(where.strip()).is_relative_to(venv)

    _run(venv / "bin/activeseg", "init", "proj", "--config", "flylight", cwd=tmp_path)
    assert (tmp_path / "proj/pool.db").is_file()
    _run(venv / "bin/activeseg", "upgrade", "-p", "proj", cwd=tmp_path)
    shipped = _run(venv / "bin/python", "-c",
                   "from activeseg.resources import shipped_dir; print(shipped_dir('migrations'))",
                   cwd=tmp_path)  # fmt: skip
    assert Path(shipped.strip()).is_relative_to(venv)


def test_checkout_cli_runs_the_same_app(tmp_path: Path) -> None:
    out = _run(sys.executable, ROOT / "cli.py", "init", tmp_path / "p", "--config", "smoke",
               cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "p/pool.db").is_file(), out
