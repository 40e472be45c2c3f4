"""Project-level facts (key/value): the Label Studio project id, the ingest cursor."""

from __future__ import annotations

from sqlalchemy.orm import Session

from activeseg.pool.models import Setting


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


def delete_setting(session: Session, key: str) -> None:
    """Forget a stored project setting (nothing happens if it is not set)."""
    row = session.get(Setting, key)
    if row is not None:
        session.delete(row)
        session.flush()
