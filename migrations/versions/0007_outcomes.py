"""Outcomes: how a capability did on a task, reported through OutcomeService; Discover learns from them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("capability_id", sa.String(36), nullable=False),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("task_vector", sa.LargeBinary(), nullable=False),
        sa.Column("task_text", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["capability_id"],
            ["capabilities.id"],
            name="fk_outcomes_capability_id_capabilities",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["space_id"], ["vector_spaces.id"], name="fk_outcomes_space_id_vector_spaces", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_outcomes"),
    )
    op.create_index("ix_outcomes_capability_id_created_at", "outcomes", ["capability_id", "created_at"])
    op.create_index("ix_outcomes_space_id_tenant_id", "outcomes", ["space_id", "tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_outcomes_space_id_tenant_id", table_name="outcomes")
    op.drop_index("ix_outcomes_capability_id_created_at", table_name="outcomes")
    op.drop_table("outcomes")
