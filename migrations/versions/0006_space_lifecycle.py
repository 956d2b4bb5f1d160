"""Vector-space lifecycle: when each space became ready, serving, retired or failed, what a rollback
returns to, and the share of live traffic shadowed to it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("vector_spaces") as batch:
        batch.add_column(sa.Column("ready_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("serving_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("retired_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("failed_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("previous_serving_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("shadow_fraction", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("error", sa.Text(), nullable=False, server_default=""))
    # The one space that existed before serves; say since when.
    op.execute("UPDATE vector_spaces SET serving_at = created_at, ready_at = created_at WHERE state = 'serving'")


def downgrade() -> None:
    with op.batch_alter_table("vector_spaces") as batch:
        for column in (
            "error",
            "shadow_fraction",
            "previous_serving_id",
            "failed_at",
            "retired_at",
            "serving_at",
            "ready_at",
        ):
            batch.drop_column(column)
