"""A project: one directory with the resolved config, the pool database and the zarr arrays.

Commands find their project the way git finds its repository: the given directory, or the
current one, or the nearest parent holding ``activeseg.yaml``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from activeseg.config import Config, load_config
from activeseg.errors import ProjectExistsError, ProjectNotFoundError
from activeseg.pool import db

log = logging.getLogger(__name__)

CONFIG_FILE = "activeseg.yaml"
DATABASE_FILE = "pool.db"
DATABASE_URL_ENV = "ACTIVESEG_DATABASE_URL"


@dataclass(frozen=True)
class Project:
    """An opened project: its root directory, config and database."""

    root: Path
    config: Config
    engine: Engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session in one transaction (committed on success, rolled back on error)."""
        with db.session_scope(sessionmaker(self.engine, expire_on_commit=False)) as session:
            yield session

    @property
    def volumes_dir(self) -> Path:
        """Return where registered volumes' zarr arrays live."""
        return self.root / "volumes"

    @property
    def labels_dir(self) -> Path:
        """Return where per-crop label zarr arrays live."""
        return self.root / "labels"

    @property
    def models_dir(self) -> Path:
        """Return where model checkpoints live."""
        return self.root / "models"

    @property
    def predictions_dir(self) -> Path:
        """Return where predictions and uncertainty maps live."""
        return self.root / "predictions"

    def crop_label_path(self, crop_id: int, tag: str) -> Path:
        """Return where one version of a crop's labels is stored (``tag`` names the version)."""
        return self.labels_dir / f"crop-{crop_id}" / f"{tag}.zarr"

    def relative(self, path: Path) -> str:
        """Return a path as stored in the pool: relative to the project root when inside it."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path.resolve())

    def resolve(self, stored: str) -> Path:
        """Return the absolute path of a path stored in the pool."""
        return self.root / stored


def database_url(root: Path) -> str:
    """Return the pool's URL: ``$ACTIVESEG_DATABASE_URL`` or the project's SQLite file."""
    return os.environ.get(DATABASE_URL_ENV) or db.sqlite_url(root / DATABASE_FILE)


def init_project(root: Path, config_source: str | Path = "default") -> Project:
    """Create a project in ``root`` with a migrated database and return it opened."""
    root = root.resolve()
    if (root / CONFIG_FILE).exists():
        raise ProjectExistsError(f"{root} already holds an activeseg project ({CONFIG_FILE})")
    config = load_config(config_source)
    root.mkdir(parents=True, exist_ok=True)
    url = database_url(root)
    try:
        db.upgrade(url)
    except Exception:
        if url == db.sqlite_url(root / DATABASE_FILE):  # leave no half-made database behind
            for leftover in root.glob(DATABASE_FILE + "*"):
                leftover.unlink()
        raise
    (root / CONFIG_FILE).write_text(config.to_yaml())
    log.info("created project in %s", root)
    return open_project(root)


def find_project_root(start: Path) -> Path:
    """Return the nearest directory at or above ``start`` that holds a project."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ProjectNotFoundError(
        f"no activeseg project in {start} or any parent directory; create one with "
        f"`activeseg init DIR` or pass --project DIR"
    )


def open_project(
    root: Path | None = None, *, check: bool = True, search_parents: bool = True
) -> Project:
    """Open the project at or above ``root`` (default: the current directory); exactly at
    ``root`` when not ``search_parents``."""
    if search_parents:
        found = find_project_root(root or Path.cwd())
    elif root is not None and (root / CONFIG_FILE).is_file():
        found = root.resolve()
    else:
        raise ProjectNotFoundError(f"{root} holds no activeseg project ({CONFIG_FILE})")
    config = load_config(found / CONFIG_FILE)
    engine = db.make_engine(database_url(found))
    if check:
        db.check_revision(engine)
    return Project(root=found, config=config, engine=engine)
