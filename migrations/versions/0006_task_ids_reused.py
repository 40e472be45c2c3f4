"""Label Studio task ids are unique among active tasks only: a server reuses the ids of
deleted tasks, so a retired task keeps its old id without blocking a new one.

Revision ID: 0006_task_ids_reused
Revises: 0005_annotation_status
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006_task_ids_reused"
down_revision: str | None = "0005_annotation_status"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Replace the unique constraint on task.ls_task_id by a unique index over active tasks."""
    with op.batch_alter_table("task") as batch:
        batch.drop_constraint("uq_task_ls_task_id", type_="unique")
        batch.create_index(
            "uq_task_active_ls_task_id",
            ["ls_task_id"],
            unique=True,
            sqlite_where=sa.text("active = 1"),
            postgresql_where=sa.text("active"),
        )


def downgrade() -> None:
    """Restore the unique constraint (fails if a retired task shares an id with a new one)."""
    with op.batch_alter_table("task") as batch:
        batch.drop_index("uq_task_active_ls_task_id")
        batch.create_unique_constraint("uq_task_ls_task_id", ["ls_task_id"])
