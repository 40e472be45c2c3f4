"""Opening the pool database: engine, sessions, and Alembic migrations.

``alembic upgrade head`` is how every database is created and upgraded; commands refuse to run
on a database whose revision is behind or ahead of the code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from activeseg.errors import DatabaseRevisionError, LockError
from activeseg.resources import shipped_dir

log = logging.getLogger(__name__)


SQLITE_WAIT_SECONDS = 30.0


def sqlite_url(path: Path) -> str:
    """Return the SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path.resolve()}"


def make_engine(url: str) -> Engine:
    """Return an engine; on SQLite, foreign keys are enforced and writers wait for each other."""
    sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": SQLITE_WAIT_SECONDS} if sqlite else {})
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def alembic_config(url: str) -> AlembicConfig:
    """Return an Alembic config for the migrations shipped with activeseg."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(shipped_dir("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """Return the newest migration revision the code knows."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """Return the database's migration revision (None for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_revision(engine: Engine) -> None:
    """Raise DatabaseRevisionError unless the database is exactly at the code's head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    known = {
        rev.revision
        for rev in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()
    }
    where = engine.url.database
    if current is None or current in known:
        raise DatabaseRevisionError(
            f"the pool database {where} is at revision {current or 'none'}, behind the code "
            f"({head}); run `activeseg upgrade` to migrate it"
        )
    raise DatabaseRevisionError(
        f"the pool database {where} is at revision {current}, which this version of "
        f"activeseg does not know (newer code made it?); upgrade activeseg"
    )


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Yield a session in one transaction: committed on success, rolled back on error.

    A database another process keeps locked past the wait becomes a LockError (exit 75, try
    again), not a traceback.
    """
    try:
        with factory() as session, session.begin():
            yield session
    except OperationalError as exc:
        if "locked" not in str(exc.orig):
            raise
        raise LockError(
            f"the pool database is locked by another process (waited {SQLITE_WAIT_SECONDS} s); "
            f"try again when it has finished"
        ) from None
