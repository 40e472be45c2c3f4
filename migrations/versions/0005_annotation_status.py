"""Annotations keep the annotator's status choice (done / unsure).

Revision ID: 0005_annotation_status
Revises: 0004_flock_abandon
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_annotation_status"
down_revision: str | None = "0004_flock_abandon"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add annotation.status (NULL for annotations ingested before)."""
    with op.batch_alter_table("annotation") as batch:
        batch.add_column(sa.Column("status", sa.String(length=20), nullable=True))


def downgrade() -> None:
    """Drop annotation.status."""
    with op.batch_alter_table("annotation") as batch:
        batch.drop_column("status")
