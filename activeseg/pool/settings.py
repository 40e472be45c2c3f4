"""Project-level facts (key/value) and the process lock that keeps two rounds apart."""

from __future__ import annotations

import os
import socket
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activeseg.errors import LockError
from activeseg.pool.models import Lock, Setting


def get_setting(session: Session, key: str) -> str | None:
    """Return a stored project setting, or None."""
    row = session.get(Setting, key)
    return None if row is None else row.value


def set_setting(session: Session, key: str, value: str) -> None:
    """Store a project setting, replacing any earlier value."""
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=value))
    else:
        row.value = value
    session.flush()


def _holder_alive(lock: Lock) -> bool:
    if lock.host != socket.gethostname():
        return True  # cannot check another machine: assume it is alive
    try:
        os.kill(lock.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(session: Session, name: str) -> None:
    """Take the named lock for this process; a lock whose holder died is taken over."""
    held = session.get(Lock, name)
    if held is not None:
        if held.pid == os.getpid() and held.host == socket.gethostname():
            return
        if _holder_alive(held):
            raise LockError(
                f"another `{name}` is running on this project (pid {held.pid} on {held.host}, "
                f"since {held.acquired_at:%Y-%m-%d %H:%M:%S} UTC); wait for it to finish"
            )
        session.delete(held)
        session.flush()
    try:
        session.add(Lock(name=name, pid=os.getpid(), host=socket.gethostname()))
        session.flush()
    except IntegrityError as exc:
        raise LockError(f"another `{name}` took the lock at the same moment") from exc


def release_lock(session: Session, name: str) -> None:
    """Release the named lock if this process holds it."""
    session.execute(
        delete(Lock).where(
            Lock.name == name, Lock.pid == os.getpid(), Lock.host == socket.gethostname()
        )
    )


def lock_holder(session: Session, name: str) -> tuple[int, str, datetime] | None:
    """Return (pid, host, since) of the named lock's holder, or None."""
    row = session.scalar(select(Lock).where(Lock.name == name))
    return None if row is None else (row.pid, row.host, row.acquired_at)
