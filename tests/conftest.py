"""Shared fixtures: the real FlyLight crop (copied, it is read-only), small projects, and
ledgers on both databases (SQLite, and a real PostgreSQL server when one is given)."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import URL, make_url, text

from activeseg.pool import db
from activeseg.workflows.project import Project, init_project

FLYLIGHT = Path(__file__).resolve().parent / "data/flylight/JRC_SS05008-20160318_24_B2_crop.zarr"
# An admin URL of a PostgreSQL server (.ci/run starts one): the tests make their own database.
# Without it, the tests start a throwaway server from the installed PostgreSQL.
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


def _postgres_bin() -> Path | None:
    """Return the folder of the newest installed PostgreSQL's programs (Debian's layout)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: float(p.parts[-3])
    )
    on_path = shutil.which("initdb")
    return found[-1].parent if found else Path(on_path).parent if on_path else None


@contextmanager
def _throwaway_server(bin_dir: Path) -> Iterator[str]:
    """Yield the admin URL of a new PostgreSQL cluster on 127.0.0.1, stopped and removed at
    the end (as ``.ci/run`` starts one; the server refuses to run as root)."""
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="activeseg-postgres-"))
    password = secrets.token_hex(16)
    (folder / "password").write_text(password + "\n")
    if as_owner:
        for path in (folder, folder / "password"):
            shutil.chown(path, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    data = folder / "data"
    run([*as_owner, bin_dir / "initdb", "-D", data, "-U", "activeseg", "-A", "scram-sha-256",
         f"--pwfile={folder / 'password'}", "--no-sync"])  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    run([*as_owner, bin_dir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o", options,
         "start"])  # fmt: skip
    try:
        yield f"postgresql+psycopg://activeseg:{password}@127.0.0.1:{port}/postgres"
    finally:
        run([*as_owner, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Yield the admin URL of a PostgreSQL server: ``$ACTIVESEG_TEST_POSTGRES_URL``, else one
    started here from the installed PostgreSQL. Without either the ledger tests are skipped,
    and fail in CI (``$CI`` set)."""
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is not installed (pip install -e '.[dev]')")
    admin = os.environ.get(POSTGRES_URL_ENV)
    if admin:
        yield admin
        return
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _unavailable(
            f"no PostgreSQL installed and {POSTGRES_URL_ENV} not set (an admin URL such as "
            f"postgresql+psycopg://USER:PASSWORD@127.0.0.1:5432/postgres)"
        )
    with _throwaway_server(bin_dir) as url:
        yield url


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the ledger tests on PostgreSQL, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[URL]:
    """Return the URL of a database made for this test session (dropped at its end)."""
    admin_url = db.parse_postgres_url(postgres_server)
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
