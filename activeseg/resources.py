"""Where the configs and Alembic migrations shipped with activeseg live.

A checkout keeps them at the repository's top level (``configs/``, ``migrations/``); the wheel
carries the same folders inside the package (``activeseg/configs``, ``activeseg/migrations``),
mapped there by ``pyproject.toml``. Both lookups land on one copy of the files.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_MARKERS = {"configs": "default.yaml", "migrations": "env.py"}


def shipped_dir(name: str) -> Path:
    """Return the folder ``name`` (``configs`` or ``migrations``) of this installation."""
    inside = _PACKAGE / name
    return inside if (inside / _MARKERS[name]).is_file() else _PACKAGE.parent / name
