"""Rounds can be abandoned; the round lock moves from a table to a file lock.

The lock table held (name, pid, host): a holder that died in another container, or whose pid
was reused, wedged the project. The lock is now an flock on a file in the project, released by
the kernel when its holder dies.

Revision ID: 0004_flock_abandon
Revises: 0003_score_cache
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_flock_abandon"
down_revision: str | None = "0003_score_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add round.abandoned; drop the lock table."""
    with op.batch_alter_table("round") as batch:
        batch.add_column(
            sa.Column("abandoned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.drop_table("lock")


def downgrade() -> None:
    """Restore the lock table (empty) and drop round.abandoned."""
    op.create_table(
        "lock",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_lock")),
    )
    with op.batch_alter_table("round") as batch:
        batch.drop_column("abandoned")
