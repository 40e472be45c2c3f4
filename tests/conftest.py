"""Shared fixtures: the real FlyLight crop (copied, it is read-only), small projects, and
ledgers on both databases (SQLite, and a real PostgreSQL server when one is given)."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url, text

from activeseg.pool import db
from activeseg.workflows.project import Project, init_project

FLYLIGHT = Path(__file__).resolve().parent / "data/flylight/JRC_SS05008-20160318_24_B2_crop.zarr"
# An admin URL of a PostgreSQL server (.ci/run starts one): the tests make their own database.
POSTGRES_URL_ENV = "ACTIVESEG_TEST_POSTGRES_URL"
LEDGERS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
_schemas = itertools.count()


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


def _execute(url: URL, *statements: str) -> None:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """Return the URL of a database made for this test session (dropped at its end) on the
    server of ``$ACTIVESEG_TEST_POSTGRES_URL``. In CI (``$CI`` set) a missing server fails."""
    admin = os.environ.get(POSTGRES_URL_ENV)
    if not admin:
        reason = (
            f"{POSTGRES_URL_ENV} is not set; set it to an admin URL such as "
            f"postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/postgres (.ci/run starts a server)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the ledger tests on PostgreSQL, but {reason}")
        pytest.skip(reason)
    admin_url = db.parse_postgres_url(admin)
    name = f"activeseg_test_{secrets.token_hex(4)}"
    _execute(admin_url, f'CREATE DATABASE "{name}"')
    yield admin_url.set(database=name)
    _execute(admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: URL) -> URL:
    """Return the URL (password included) of a fresh, empty PostgreSQL ledger: a schema of
    its own in the session's database."""
    schema = f"test_{next(_schemas)}"
    _execute(postgres_database, f'CREATE SCHEMA "{schema}"')
    return postgres_database.update_query_dict({"options": f"-csearch_path={schema}"})


@pytest.fixture(params=LEDGERS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """Return the URL (password included) of a fresh, empty ledger: a SQLite file, or a
    PostgreSQL one (see ``postgres_url``)."""
    if request.param == "sqlite":
        return make_url(db.sqlite_url(tmp_path / "pool.db"))
    url: URL = request.getfixturevalue("postgres_url")
    return url


def _make_project(root: Path, url: URL) -> Project:
    """Return a fresh smoke project in ``root`` whose ledger is at ``url`` (SQLite: in root)."""
    if not db.is_postgres(url):
        return init_project(root, "smoke")
    return init_project(root, "smoke", database=url.render_as_string(hide_password=False))


@pytest.fixture
def ledger_project(ledger_url: URL, tmp_path: Path) -> Project:
    """Return a fresh, empty smoke project whose ledger is SQLite or PostgreSQL."""
    return _make_project(tmp_path / "project", ledger_url)


@pytest.fixture
def postgres_project(postgres_url: URL, tmp_path: Path) -> Project:
    """Return a fresh, empty smoke project whose ledger is on PostgreSQL."""
    return _make_project(tmp_path / "project", postgres_url)
