"""The pool database: Alembic migrations on a real SQLite file and PostgreSQL server,
constraints, revision checks."""

from __future__ import annotations

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import URL, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from activeseg.errors import DatabaseRevisionError, LockError
from activeseg.pool import db, settings
from activeseg.pool.models import Base, ScoreCache
from activeseg.workflows.project import Project

TABLES = {
    "volume",
    "crop",
    "round",
    "stage",
    "checkpoint",
    "score",
    "score_cache",
    "task",
    "annotation",
    "setting",
    "alembic_version",
}


def test_upgrade_downgrade_upgrade_on_a_real_file(ledger_url: URL) -> None:
    url = ledger_url
    db.upgrade(url)
    engine = db.make_engine(url)
    assert set(inspect(engine).get_table_names()) == TABLES
    db.downgrade(url, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    db.upgrade(url)
    assert set(inspect(engine).get_table_names()) == TABLES
    assert db.current_revision(engine) == db.head_revision()


def test_autogenerate_finds_no_difference_between_models_and_migrations(ledger_url: URL) -> None:
    url = ledger_url
    db.upgrade(url)
    with db.make_engine(url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_a_database_behind_the_code_is_refused_with_advice(ledger_url: URL) -> None:
    url = ledger_url
    engine = db.make_engine(url)
    with pytest.raises(DatabaseRevisionError, match=r"behind.*activeseg upgrade"):
        db.check_revision(engine)


def test_a_database_ahead_of_the_code_is_refused(ledger_url: URL) -> None:
    url = ledger_url
    db.upgrade(url)
    engine = db.make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'fffffff'"))
    with pytest.raises(DatabaseRevisionError, match="does not know"):
        db.check_revision(engine)


def test_foreign_keys_are_enforced(ledger_url: URL) -> None:
    url = ledger_url
    db.upgrade(url)
    with db.make_engine(url).begin() as connection, pytest.raises(IntegrityError):
        connection.execute(
            text(
                "INSERT INTO crop (volume_id, z0, y0, x0, z1, y1, x1, foreground, status) "
                "VALUES (42, 0, 0, 0, 1, 1, 1, 0.5, 'unlabeled')"
            )
        )


def test_the_score_cache_migration_keeps_a_ledger_and_cascades(ledger_url: URL) -> None:
    url = ledger_url
    db.upgrade(url, "0001")
    engine = db.make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO volume (id, name, path, split, channels, shape, voxel_size, "
                "has_ground_truth, source, created_at) VALUES (1, 'v', 'v.zarr', 'pool', 1, "
                "'[1, 1, 1]', '[1, 1, 1]', false, 's', '2026-01-01 00:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO crop (id, volume_id, z0, y0, x0, z1, y1, x1, foreground, status) "
                "VALUES (7, 1, 0, 0, 0, 1, 1, 1, 0.5, 'unlabeled')"
            )
        )
    assert "score_cache" not in inspect(engine).get_table_names()
    db.upgrade(url)
    assert "score_cache" in inspect(engine).get_table_names()
    with Session(engine) as session, session.begin():
        session.add(ScoreCache(crop_id=7, model="m", parts={"bald": 1.0}, analysis=None))
    with Session(engine) as session, session.begin(), pytest.raises(IntegrityError):
        session.add(ScoreCache(crop_id=7, model="m", parts={}, analysis=None))
        session.flush()
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM crop WHERE id = 7"))
        left = connection.execute(text("SELECT count(*) FROM score_cache")).scalar()
    assert left == 0
    db.downgrade(url, "0001")
    assert "score_cache" not in inspect(engine).get_table_names()


def test_a_database_locked_by_another_process_is_a_lock_error(
    smoke_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_WAIT_SECONDS", 0.2)
    quick = db.make_engine(db.sqlite_url(smoke_project.root / "pool.db"))
    holder = sqlite3.connect(smoke_project.root / "pool.db")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        refused = pytest.raises(LockError, match="locked by another process")
        with refused as caught, db.session_scope(sessionmaker(quick)) as session:
            settings.set_setting(session, "x", "1")
        assert caught.value.exit_code == 75
    finally:
        holder.rollback()
        holder.close()
        quick.dispose()
