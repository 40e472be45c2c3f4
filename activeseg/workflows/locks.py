"""Project locks the kernel releases: an exclusive ``flock`` on a file in the project.

A crashed or killed holder, in this container or another, cannot wedge a project: its lock
goes away with its process. ``activeseg unlock`` therefore removes nothing: it reports who
holds what, and how to free it (stop that process).

With a PostgreSQL ledger, hosts that share it may not share a file system (or one whose
flocks they agree on): the lock is then also an advisory lock on the ledger's server, which
the server releases when the holder's connection dies (``activeseg.pool.advisory``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from activeseg.errors import LockError
from activeseg.pool import db
from activeseg.pool.advisory import advisory_lock
from activeseg.workflows.project import database_url

LOCK_DIR = ".locks"
POLL_SECONDS = 0.1


def lock_path(root: Path, name: str) -> Path:
    """Return the file whose flock is the project's lock ``name``."""
    return root / LOCK_DIR / f"{name}.lock"


@contextmanager
def hold_lock(root: Path, name: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the project's lock ``name``, waiting up to ``wait_seconds`` for its holder.

    Raises LockError (exit code 75, try again later) naming the holder when it stays taken.
    The ledger's server lock, if any, is taken first: every process takes the two in the
    same order.
    """
    deadline = time.monotonic() + wait_seconds
    with ExitStack() as stack:
        url = database_url(root)
        if db.is_postgres(url):
            me = f"pid {os.getpid()} on {socket.gethostname()}"
            stack.enter_context(advisory_lock(url, name, holder=me, deadline=deadline))
        stack.enter_context(_file_lock(root, name, deadline))
        yield


@contextmanager
def _file_lock(root: Path, name: str, deadline: float) -> Iterator[None]:
    path = lock_path(root, name)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, name, path, deadline)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _acquire(fd: int, name: str, path: Path, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockError(
                    f"another `{name}` is running on this project ({holder(path) or 'unknown'}); "
                    f"try again when it has finished"
                ) from None
            time.sleep(POLL_SECONDS)


def holder(path: Path) -> str | None:
    """Return "pid P on HOST" of the lock file's last holder, or None if it was never taken."""
    try:
        pid, host = path.read_text().split()
    except (OSError, ValueError):
        return None
    return f"pid {pid} on {host}"


@dataclass(frozen=True)
class LockState:
    """One project lock: whether a live process holds it, and who held it last."""

    name: str
    held: bool
    holder: str | None

    def as_dict(self) -> dict[str, object]:
        """Return the state as JSON-able data."""
        return {"name": self.name, "held": self.held, "holder": self.holder}


def lock_states(root: Path) -> list[LockState]:
    """Return the state of every lock the project has used, by name."""
    states = []
    for path in sorted((root / LOCK_DIR).glob("*.lock")):
        name = path.name.removesuffix(".lock")
        states.append(LockState(name, is_held(root, name), holder(path)))
    return states


def is_held(root: Path, name: str) -> bool:
    """Return whether a live process holds the project's lock ``name`` (taking nothing)."""
    try:
        fd = os.open(lock_path(root, name), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
