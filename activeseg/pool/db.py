"""Opening the pool database: engine, sessions, and Alembic migrations.

The ledger is a SQLite file (the default) or a PostgreSQL database named by URL (driver
psycopg 3, ``pip install activeseg[postgres]``). ``alembic upgrade head`` is how every database
is created and upgraded, on both; commands refuse to run on a database whose revision is
behind or ahead of the code. Messages name a database by :func:`describe`, which leaves out
the user and password.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, make_url, select
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from activeseg.errors import DatabaseConnectionError, DatabaseRevisionError, InputError, LockError
from activeseg.pool.models import Base
from activeseg.resources import shipped_dir

log = logging.getLogger(__name__)


SQLITE_WAIT_SECONDS = 30.0
POSTGRES_DRIVER = "postgresql+psycopg"


def sqlite_url(path: Path) -> str:
    """Return the SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path.resolve()}"


def is_postgres(url: str | URL) -> bool:
    """Return whether ``url`` names a PostgreSQL database."""
    return make_url(url).get_backend_name() == "postgresql"


def parse_postgres_url(text: str) -> URL:
    """Return a PostgreSQL URL with the psycopg 3 driver, or raise InputError.

    ``postgresql://`` and ``postgresql+psycopg://`` are accepted; the URL must name a database.
    The text is never repeated in the message: it may hold a password.
    """
    try:
        url = make_url(text.strip())
    except ArgumentError:
        raise InputError(
            "the ledger URL is not a database URL; expected "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise InputError(
            f"the ledger URL must be a PostgreSQL one (postgresql+psycopg://USER@HOST/DATABASE), "
            f"not {url.get_backend_name()}; without --database the ledger is the project's "
            f"SQLite file"
        )
    if url.get_driver_name() not in ("psycopg", "psycopg2"):  # psycopg2 is the bare default
        raise InputError(f"the ledger URL's driver must be psycopg, not {url.get_driver_name()}")
    if not url.database:
        raise InputError(f"the ledger URL {describe(url)} names no database")
    return url.set(drivername=POSTGRES_DRIVER)


def require_driver() -> None:
    """Raise InputError unless psycopg 3, the PostgreSQL driver, is installed."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise InputError(
            "a PostgreSQL ledger needs the psycopg driver: pip install 'activeseg[postgres]'"
        ) from None


def describe(url: str | URL) -> str:
    """Return a database URL as shown in messages: no user, no password."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        return url.database or "(memory)"
    return _credentials_dropped(url, keep_user=False).render_as_string()


def without_password(url: URL) -> URL:
    """Return ``url`` without its password (the user stays)."""
    return _credentials_dropped(url, keep_user=True)


def _credentials_dropped(url: URL, *, keep_user: bool) -> URL:
    # URL.set() treats None as "unchanged": build the URL anew.
    return URL.create(
        url.drivername,
        username=url.username if keep_user else None,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )


def finite_json(value: Any) -> Any:
    """Return ``value`` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


def _dump_json(value: Any) -> str:
    # PostgreSQL's json type refuses NaN; both databases store null, so both read back alike.
    return json.dumps(finite_json(value), allow_nan=False)


def make_engine(url: str | URL) -> Engine:
    """Return an engine; on SQLite, foreign keys are enforced and writers wait for each other.

    JSON columns never receive NaN or infinity: they are stored as null.
    """
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        require_driver()
        # pre-ping: a round idles for hours while it trains; the server may close idle links.
        return create_engine(url, json_serializer=_dump_json, pool_pre_ping=True)
    engine = create_engine(
        url, json_serializer=_dump_json, connect_args={"timeout": SQLITE_WAIT_SECONDS}
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def alembic_config() -> AlembicConfig:
    """Return an Alembic config for the migrations shipped with activeseg."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(shipped_dir("migrations")))
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (in one transaction on PostgreSQL)."""
    _migrate(url, command.upgrade, revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    _migrate(url, command.downgrade, revision)


def _migrate(url: str | URL, step: Any, revision: str) -> None:
    # The connection is handed to Alembic: the URL, password included, never becomes text.
    engine = make_engine(url)
    try:
        with connected(engine) as connection, connection.begin():
            config = alembic_config()
            config.attributes["connection"] = connection
            step(config, revision)
    finally:
        engine.dispose()


@contextmanager
def connected(engine: Engine) -> Iterator[Any]:
    """Yield a connection; a server that cannot be reached is a DatabaseConnectionError."""
    try:
        connection = engine.connect()
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "refused"
        password = engine.url.password
        if password:
            reason = reason.replace(str(password), "***")
        if password is None and is_postgres(engine.url):
            reason += (
                "; no password was given: set ACTIVESEG_DATABASE_PASSWORD in the project's .env "
                "or the environment, or use ~/.pgpass"
            )
        raise DatabaseConnectionError(
            f"cannot connect to the ledger {describe(engine.url)}: {reason}"
        ) from None
    with connection:
        yield connection


def head_revision() -> str | None:
    """Return the newest migration revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """Return the database's migration revision (None for an empty database)."""
    with connected(engine) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_revision(engine: Engine) -> None:
    """Raise DatabaseRevisionError unless the database is exactly at the code's head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    where = describe(engine.url)
    if current is None or current in known:
        raise DatabaseRevisionError(
            f"the pool database {where} is at revision {current or 'none'}, behind the code "
            f"({head}); run `activeseg upgrade` to migrate it"
        )
    raise DatabaseRevisionError(
        f"the pool database {where} is at revision {current}, which this version of "
        f"activeseg does not know (newer code made it?); upgrade activeseg"
    )


def copy_ledger(source: Engine, target: str | URL) -> None:
    """Copy every row of the ledger at ``source`` into a new database at ``target``, migrated
    to the code's head first (``source`` must be at head too)."""
    check_revision(source)
    upgrade(target)
    engine = make_engine(target)
    try:
        with connected(source) as reader, engine.begin() as writer:
            for table in Base.metadata.sorted_tables:  # parents before the rows that use them
                rows = [dict(row) for row in reader.execute(select(table)).mappings()]
                if rows:
                    writer.execute(table.insert(), rows)
    finally:
        engine.dispose()


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
