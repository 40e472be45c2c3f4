"""Annotations record what they cost the annotator (slices, repainted voxels, instance edits).

Revision ID: 0007_annotation_cost
Revises: 0006_task_ids_reused
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_annotation_cost"
down_revision: str | None = "0006_task_ids_reused"
branch_labels = None
depends_on = None

COLUMNS = ("slices", "voxels", "repainted", "added", "removed", "split", "merged")


def upgrade() -> None:
    """Add annotation.cost_* (NULL for annotations ingested before: not measured)."""
    with op.batch_alter_table("annotation") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(f"cost_{name}", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop annotation.cost_*."""
    with op.batch_alter_table("annotation") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(f"cost_{name}")
