"""The ledger on PostgreSQL: stored per project, passwords kept out of files and messages,
NaN stored as null, the round lock shared by hosts, one full simulated round on both ledgers."""

from __future__ import annotations

import math
import os
import secrets
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import URL, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.errors import DatabaseConnectionError, InputError, LockError, ProjectExistsError
from activeseg.pool import db
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, VolumeInfo
from activeseg.workflows.locks import hold_lock
from activeseg.workflows.loop import STAGES, run_round
from activeseg.workflows.project import (
    LEDGER_URL_FILE,
    PASSWORD_ENV,
    Project,
    database_url,
    init_project,
    open_project,
)
from activeseg.workflows.simulate import copy_project, create_demo_project

ROOT = Path(__file__).resolve().parents[2]


def _text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.mark.postgres
def test_init_stores_the_url_in_the_project_and_the_password_in_its_env(
    postgres_url: URL, tmp_path: Path
) -> None:
    ledger_url = postgres_url
    root = tmp_path / "lab"
    answer = CliRunner().invoke(
        app, ["init", str(root), "-c", "smoke", "--database", _text(ledger_url)]
    )
    assert answer.exit_code == 0, answer.output
    password = str(ledger_url.password)
    assert password not in answer.output and f"{ledger_url.username}:" not in answer.output
    assert ledger_url.host is not None and ledger_url.host in answer.output
    stored = (root / LEDGER_URL_FILE).read_text()
    assert password not in stored and "postgresql+psycopg://" in stored
    assert password not in (root / "activeseg.yaml").read_text()
    env = root / ".env"
    assert f"{PASSWORD_ENV}=" in env.read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert database_url(root) == ledger_url  # the password comes back from .env
    assert not (root / "pool.db").exists()
    project = open_project(root)
    assert project.engine.url.database == ledger_url.database
    with project.session() as session:
        assert pool_volumes.list_volumes(session) == []


def test_a_ledger_url_is_per_project_never_from_the_environment(
    smoke_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVESEG_DATABASE_URL", "postgresql+psycopg://x@elsewhere/shared")
    assert database_url(smoke_project.root).get_backend_name() == "sqlite"
    assert open_project(smoke_project.root).engine.url.database.endswith("pool.db")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://me:s3cret@db/x", "must be a PostgreSQL one"),
        ("postgresql+asyncpg://me:s3cret@db/x", "driver must be psycopg"),
        ("postgresql://me:s3cret@db", "names no database"),
        ("not a url s3cret", "not a database URL"),
    ],
)
def test_a_bad_ledger_url_is_refused_without_showing_the_password(
    tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(InputError, match=message) as refused:
        init_project(tmp_path / "p", "smoke", database=url)
    assert "s3cret" not in str(refused.value)
    assert not (tmp_path / "p").exists()


def test_an_unreachable_server_is_a_named_error_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (in the dev extras)")
    url = "postgresql://me:s3cret@127.0.0.1:1/ledger"  # port 1: nothing listens
    with pytest.raises(DatabaseConnectionError, match="cannot connect") as refused:
        init_project(tmp_path / "p", "smoke", database=url)
    assert "s3cret" not in str(refused.value) and "me@" not in str(refused.value)


@pytest.mark.postgres
def test_two_projects_never_share_one_ledger(postgres_url: URL, tmp_path: Path) -> None:
    init_project(tmp_path / "first", "smoke", database=_text(postgres_url))
    with pytest.raises(ProjectExistsError, match="already holds an activeseg ledger"):
        init_project(tmp_path / "second", "smoke", database=_text(postgres_url))
    assert not (tmp_path / "second" / "activeseg.yaml").exists()


def test_json_columns_store_nan_as_null(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        started = pool_rounds.start_round(session, strategy="bald", batch_size=1, config="")
        pool_rounds.update_round_metrics(
            session, started.id, {"AP50": math.nan, "auroc": [1.0, math.inf], "C": 0.5}
        )
        pool_rounds.begin_stage(session, started.id, "evaluate")
        pool_rounds.end_stage(session, started.id, "evaluate", outputs={"x": {"y": math.nan}})
    with ledger_project.session() as session:
        stored = pool_rounds.get_round(session, started.number)
    assert stored.metrics == {"AP50": None, "auroc": [1.0, None], "C": 0.5}
    evaluate = stored.stage("evaluate")
    assert evaluate is not None and evaluate.outputs == {"x": {"y": None}}


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from activeseg.workflows.locks import hold_lock

    with hold_lock(Path(sys.argv[1]), "round"):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.mark.postgres
def test_the_round_lock_excludes_another_host_until_the_holder_dies(
    postgres_project: Project, tmp_path: Path
) -> None:
    ledger_project = postgres_project
    # Another host: the same ledger, but its own copy of the folder (flocks not shared).
    elsewhere = Path(shutil.copytree(ledger_project.root, tmp_path / "other-host"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ledger_project.root)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(LockError, match=f"pid {holder.pid} on") as refused:
            run_round(open_project(elsewhere), until="ingest")
        assert refused.value.exit_code == 75
        assert str(ledger_project.engine.url.password) not in str(refused.value)
    finally:
        holder.kill()  # kill -9: the server ends its session and releases the lock
        holder.wait()
    paused = run_round(open_project(elsewhere), until="ingest")
    assert [s.name for s in paused.stages] == ["ingest"]


def _volume_with_a_crop(session: Session, width: int = 8) -> tuple[VolumeInfo, CropInfo]:
    """Register a one-channel volume (8, 8, width) and its crop at the origin (8, 8, 8)."""
    volume = pool_volumes.add_volume(
        session,
        name="v",
        path="volumes/v.zarr",
        split="pool",
        channels=1,
        shape=(8, 8, width),
        voxel_size=(1.0, 1.0, 1.0),
        has_ground_truth=True,
        source="t",
    )
    return volume, pool_volumes.add_crops(session, volume.id, [((0, 0, 0), (8, 8, 8), 0.1)])[0]


@pytest.mark.postgres
def test_a_simulation_copy_of_a_postgres_project_gets_its_own_sqlite_ledger(
    postgres_project: Project, tmp_path: Path
) -> None:
    ledger_project = postgres_project
    with ledger_project.session() as session:
        volume, _ = _volume_with_a_crop(session, width=16)
    copy = copy_project(ledger_project, tmp_path / "copy", ledger_project.config)
    assert copy.engine.url.get_backend_name() == "sqlite"
    assert not (copy.root / LEDGER_URL_FILE).exists()
    with copy.session() as session:
        assert [c.origin for c in pool_volumes.list_crops(session)] == [(0, 0, 0)]
        pool_volumes.add_crops(session, volume.id, [((0, 0, 8), (8, 8, 16), 0.1)])
    with ledger_project.session() as session:
        assert len(pool_volumes.list_crops(session)) == 1  # the original is untouched


@pytest.mark.slow
def test_a_full_simulated_round_runs_on_either_ledger(ledger_project: Project) -> None:
    project = create_demo_project(ledger_project.root, "smoke")
    first = run_round(project)  # model-free: selects and queues a batch
    second = run_round(project)  # ingests the simulated answers, trains, evaluates, scores
    for info in (first, second):
        assert [s.name for s in info.stages] == list(STAGES)
        assert all(s.status == "done" for s in info.stages) and info.finished_at is not None
    train = second.stage("train")
    assert train is not None and train.outputs["labeled_crops"] == 2
    assert {"AP50", "avF1"} <= set(second.metrics)
    with project.session() as session:
        labeled = pool_volumes.list_crops(session, status="labeled")
        queued = pool_volumes.list_crops(session, status="queued")
        selected = [s for s in pool_rounds.round_scores(session, second.id) if s.selected]
    assert {c.labeled_round for c in labeled} == {1}
    assert {c.id for c in queued} == {s.crop_id for s in selected}
    assert len(queued) == project.config.acquisition.batch_size


def test_long_free_text_is_cut_to_its_column_on_either_ledger(ledger_project: Project) -> None:
    # PostgreSQL refuses a string longer than its column, where SQLite would keep it.
    with ledger_project.session() as session:
        _, crop = _volume_with_a_crop(session)
        task = pool_tasks.queue_crop(session, crop.id, round_id=None, slices=[0], pushed={})
        pool_tasks.record_annotation(
            session,
            task.id,
            ls_annotation_id=1,
            annotator="a" * 300,
            lead_time=None,
            updated_at=datetime(2026, 1, 1, tzinfo=UTC),
            label_path=None,
            was_cancelled=True,
            round_number=0,
            skip_reason="too blurry " * 100,
        )
    with ledger_project.session() as session:
        skipped = pool_volumes.get_crop(session, crop.id)
        (annotation,) = pool_tasks.annotation_history(session, task.id)
    assert skipped.skip_reason == ("too blurry " * 100)[:500]
    assert annotation.annotator == "a" * 200


@pytest.mark.postgres
def test_a_lock_waited_for_is_taken_when_the_other_host_lets_go(
    postgres_project: Project, tmp_path: Path
) -> None:
    elsewhere = Path(shutil.copytree(postgres_project.root, tmp_path / "other-host"))
    held, release = threading.Event(), threading.Event()

    def other_host() -> None:
        with hold_lock(postgres_project.root, "ingest"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_host)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockError, match="another `ingest`"), hold_lock(elsewhere, "ingest"):
            pass
        threading.Timer(0.5, release.set).start()
        started = time.monotonic()
        with hold_lock(elsewhere, "ingest", wait_seconds=10):
            waited = time.monotonic() - started
    finally:
        release.set()
        thread.join()
    assert 0.4 < waited < 10


def test_another_users_env_is_not_read_for_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    (root / LEDGER_URL_FILE).write_text("postgresql+psycopg://me@db.lab/fly1\n")
    env = root / ".env"
    env.write_text(f"{PASSWORD_ENV}=theirs\n")
    env.chmod(0o600)
    monkeypatch.setenv(PASSWORD_ENV, "mine")
    assert database_url(root).password == "theirs"  # my own .env comes first
    monkeypatch.setattr(os, "getuid", lambda: env.stat().st_uid + 1)  # now it is someone else's
    assert database_url(root).password == "mine"


@pytest.mark.postgres
def test_ledgers_in_two_schemas_of_one_database_have_their_own_locks(
    postgres_project: Project, postgres_database: URL, tmp_path: Path
) -> None:
    schema = f"other_{secrets.token_hex(4)}"
    engine = db.make_engine(postgres_database)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = postgres_database.update_query_dict({"options": f"-csearch_path={schema}"})
    other = init_project(tmp_path / "other", "smoke", database=_text(url))
    with hold_lock(postgres_project.root, "round"), hold_lock(other.root, "round"):
        pass  # neither waits for the other
