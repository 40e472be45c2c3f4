"""Durable writes: what the ledger will point to is on disk before the ledger says so.

The pattern everywhere: write to a name no other process uses (:func:`partial_name`), flush it
(:func:`fsync_tree`), rename it into place, flush the folder, and only then commit the row.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from activeseg.errors import InputError

PARTIAL_SUFFIX = ".partial"
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def partial_name(final: Path) -> Path:
    """Return a temporary sibling of ``final`` that no other process or call will use."""
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def fsync_tree(path: Path, *, files: bool = True) -> None:
    """Flush a file, or a folder with (if ``files``) everything below it, to the disk."""
    if path.is_file():
        _fsync(path, os.O_RDONLY)
        return
    for folder, _, names in os.walk(path):
        if files:
            for name in names:
                _fsync(Path(folder) / name, os.O_RDONLY)
        _fsync(Path(folder), os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(partial: Path, final: Path) -> None:
    """Flush ``partial``, rename it to ``final`` and flush the folder that holds it."""
    fsync_tree(partial)
    partial.rename(final)
    fsync_tree(final.parent, files=False)


def remove_stale_partials(folder: Path, prefix: str) -> list[Path]:
    """Remove the partial writes in ``folder`` whose names start with ``prefix``; return them.

    Only call this while holding the lock every writer of those names holds: then no live
    process is writing them.
    """
    if not folder.is_dir():
        return []
    stale = [
        p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(PARTIAL_SUFFIX)
    ]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return stale


def claim_output(path: Path, *, force: bool) -> None:
    """Make ``path`` ready for a new zarr output: refuse one that holds something unless
    ``force``, and even then replace only a zarr store outside any project's data.

    Raises InputError (exit 2) and leaves ``path`` untouched when refusing.
    """
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not force:
        raise InputError(f"{path} already exists and is not empty; pass --force to replace it")
    if not any((path / marker).exists() for marker in ZARR_MARKERS):
        raise InputError(f"{path} is not a zarr store; not replacing it, even with --force")
    resolved = path.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / "activeseg.yaml").is_file():
            raise InputError(f"{path} is inside the activeseg project {folder}; not replacing it")
    shutil.rmtree(path)
