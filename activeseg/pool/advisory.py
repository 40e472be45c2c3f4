"""Locks the PostgreSQL server holds for a project shared by several hosts.

A lock is a session-level advisory lock taken on a connection of its own, kept open for the
lock's life. The server releases it when that connection ends: on release, when the holder
dies, or when its host vanishes (the keepalives below let the server notice within about two
minutes). Advisory locks are per database; the key also holds the schema, for ledgers kept
in schemas of one database (``?options=-csearch_path=...`` in the URL).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy.pool import NullPool

from activeseg.errors import LockError
from activeseg.pool.db import connected, describe, require_driver

# pg_try_advisory_lock(int4, int4): the first key marks activeseg's locks, the second names one.
NAMESPACE = 0x61637473  # "acts"
POLL_SECONDS = 0.1
PREFIX = "activeseg "
APPLICATION_NAME_LENGTH = 63  # the server keeps this many bytes
# The server probes a silent holder after 60 s idle, every 10 s, 6 times, then drops it.
KEEPALIVES = (
    "tcp_keepalives_idle = 60",
    "tcp_keepalives_interval = 10",
    "tcp_keepalives_count = 6",
)


def lock_key(schema: str, name: str) -> int:
    """Return the second advisory-lock key of the lock ``name`` (a non-negative int4)."""
    return zlib.crc32(f"{schema}:{name}".encode()) & 0x7FFFFFFF


@contextmanager
def advisory_lock(url: URL, name: str, *, holder: str, deadline: float) -> Iterator[None]:
    """Hold the advisory lock ``name`` in the database at ``url`` until the block ends.

    ``holder`` describes this process to whoever finds the lock taken ("pid 7 on host");
    ``deadline`` (``time.monotonic()``) is how long to keep trying. Raises LockError (exit
    code 75, try again later) naming the holder when the lock stays taken.
    """
    require_driver()
    engine = create_engine(
        url,
        poolclass=NullPool,
        connect_args={"application_name": f"{PREFIX}{holder}"[:APPLICATION_NAME_LENGTH]},
    )
    try:
        with connected(engine) as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            for setting in KEEPALIVES:
                connection.execute(text(f"SET {setting}"))
            key = lock_key(str(connection.scalar(text("SELECT current_schema()"))), name)
            if not _try_until(connection, key, deadline):
                raise LockError(
                    f"another `{name}` is running on this project "
                    f"({_holder(connection, key) or 'unknown'}, seen by the ledger's server "
                    f"{describe(url)}); try again when it has finished"
                )
            yield
    finally:
        engine.dispose()  # closing the connection ends the session: the server releases it


def _try_until(connection: Connection, key: int, deadline: float) -> bool:
    query = text("SELECT pg_try_advisory_lock(:namespace, :key)")
    while not connection.execute(query, {"namespace": NAMESPACE, "key": key}).scalar_one():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def _holder(connection: Connection, key: int) -> str | None:
    """Return how the holder of the lock ``key`` described itself, or None if unknown."""
    query = text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :namespace "
        "AND l.objid = :key AND l.objsubid = 2 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    found = connection.execute(query, {"namespace": NAMESPACE, "key": key}).scalar()
    if not found or not str(found).startswith(PREFIX):
        return None  # e.g. another role's session, whose details the server hides
    return str(found)[len(PREFIX) :]
