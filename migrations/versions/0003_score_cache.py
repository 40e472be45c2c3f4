"""score cache: a crop's score parts per model, reused while the model is unchanged

Revision ID: 0003_score_cache
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_score_cache"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "score_cache",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("crop_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("analysis", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["crop_id"],
            ["crop.id"],
            name=op.f("fk_score_cache_crop_id_crop"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_cache")),
        sa.UniqueConstraint("crop_id", "model", name="uq_score_cache_crop_model"),
    )
    with op.batch_alter_table("score_cache", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_score_cache_model"), ["model"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("score_cache", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_score_cache_model"))
    op.drop_table("score_cache")
