"""Repository functions for rounds, their recorded stages, checkpoints and scores."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.pool.models import Round


def count_rounds(session: Session) -> int:
    """Return how many rounds the project has started."""
    return session.scalar(select(func.count()).select_from(Round)) or 0
