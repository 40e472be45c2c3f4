"""A project: one directory with the resolved config, the pool database and the zarr arrays.

Commands find their project the way git finds its repository: the given directory, or the
current one, or the nearest parent holding ``activeseg.yaml``.

The ledger is the project's SQLite file ``pool.db``, or the PostgreSQL database named in the
project's own ``ledger.url`` (written by ``activeseg init --database``; no environment variable
can point a project elsewhere). That file holds no password: the password given at init goes
to the project's ``.env`` as ``ACTIVESEG_DATABASE_PASSWORD`` (which the environment may also
set); without either, libpq's own ``PGPASSWORD`` or ``~/.pgpass`` apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from activeseg.config import Config, load_config
from activeseg.durable import partial_name, replace_durably
from activeseg.errors import ProjectExistsError, ProjectNotFoundError
from activeseg.labelstudio.envfile import default_env_file, read_env_file
from activeseg.pool import db

log = logging.getLogger(__name__)

CONFIG_FILE = "activeseg.yaml"
DATABASE_FILE = "pool.db"
LEDGER_URL_FILE = "ledger.url"
PASSWORD_ENV = "ACTIVESEG_DATABASE_PASSWORD"


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


def database_url(root: Path) -> URL:
    """Return the URL of the project's ledger, password included (never show it: see
    ``db.describe``): the PostgreSQL database of ``ledger.url``, else the SQLite file."""
    stored = root / LEDGER_URL_FILE
    if not stored.is_file():
        return make_url(db.sqlite_url(root / DATABASE_FILE))
    url = db.parse_postgres_url(stored.read_text())
    password = _own_env(root).get(PASSWORD_ENV) or os.environ.get(PASSWORD_ENV)
    return url.set(password=password) if password and url.password is None else url


def _own_env(root: Path) -> dict[str, str]:
    """Return the project's ``.env`` settings, or none when it is another user's: in a project
    shared by several people, each one's password comes from their environment or ~/.pgpass."""
    path = default_env_file(root)
    if path.is_file() and hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
        return {}
    return read_env_file(path)


def init_project(
    root: Path, config_source: str | Path = "default", *, database: str | None = None
) -> Project:
    """Create a project in ``root`` with a migrated database and return it opened.

    ``database``: a PostgreSQL URL for the ledger (an existing, empty database), else the
    ledger is the SQLite file in ``root``.
    """
    root = root.resolve()
    if (root / CONFIG_FILE).exists():
        raise ProjectExistsError(f"{root} already holds an activeseg project ({CONFIG_FILE})")
    config = load_config(config_source)
    url = db.parse_postgres_url(database) if database else None
    if url is not None:
        _refuse_a_used_ledger(url)
    root.mkdir(parents=True, exist_ok=True)
    if url is None:
        _create_sqlite_ledger(root)
    else:
        db.upgrade(url)
        _store_ledger_url(root, url)
    (root / CONFIG_FILE).write_text(config.to_yaml())
    log.info("created project in %s", root)
    return open_project(root)


def _create_sqlite_ledger(root: Path) -> None:
    url = db.sqlite_url(root / DATABASE_FILE)
    try:
        db.upgrade(url)
    except BaseException:
        for leftover in root.glob(DATABASE_FILE + "*"):  # leave no half-made database behind
            leftover.unlink()
        raise


def _refuse_a_used_ledger(url: URL) -> None:
    """Raise ProjectExistsError if the database already holds a ledger: one per project."""
    engine = db.make_engine(url)
    try:
        revision = db.current_revision(engine)
    finally:
        engine.dispose()
    if revision is not None:
        raise ProjectExistsError(
            f"the database {db.describe(url)} already holds an activeseg ledger (revision "
            f"{revision}); every project needs a database of its own: create an empty one "
            f"(createdb) and pass its URL"
        )


def _store_ledger_url(root: Path, url: URL) -> None:
    """Write the URL, without its password, to ``ledger.url``; the password to ``.env``."""
    bare = db.without_password(url).render_as_string(hide_password=False)
    _write_durably(root / LEDGER_URL_FILE, bare + "\n")
    if url.password is None:
        return
    env_file = default_env_file(root)
    kept = [
        line
        for line in (env_file.read_text().splitlines() if env_file.is_file() else [])
        if not line.startswith(f"{PASSWORD_ENV}=")
    ]
    quoted = str(url.password).replace("\\", "\\\\").replace("'", "\\'")
    _write_durably(env_file, "\n".join([*kept, f"{PASSWORD_ENV}='{quoted}'", ""]), mode=0o600)


def _write_durably(path: Path, text: str, mode: int = 0o644) -> None:
    partial = partial_name(path)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    replace_durably(partial, path)


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
