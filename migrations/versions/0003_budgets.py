"""Budgets, their usage per period, and reservations.

Money is stored as integer micro-dollars (BigInteger), not Numeric: SQLite has no exact decimal type
(SQLAlchemy's Numeric there is a float underneath, and warns), while the atomic reservation is a
conditional `UPDATE ... WHERE committed + reserved + amount <= limit` that must compare exactly on both
backends. Integers are exact everywhere and 64 bits hold far more than any limit we accept (10^9 USD is
10^15 micro-dollars).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(128), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("limit_micros", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint("limit_micros >= 0", name=op.f("ck_budgets_limit_nonnegative")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_budgets_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_budgets"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_budgets_tenant_id_name"),
    )
    op.create_table(
        "budget_usage",
        sa.Column("budget_id", sa.String(36), nullable=False),
        sa.Column("period_start", Timestamp, nullable=False),
        sa.Column("committed_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micros", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("committed_micros >= 0", name=op.f("ck_budget_usage_committed_nonnegative")),
        sa.CheckConstraint("reserved_micros >= 0", name=op.f("ck_budget_usage_reserved_nonnegative")),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.id"], name="fk_budget_usage_budget_id_budgets", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("budget_id", "period_start", name="pk_budget_usage"),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("budget_id", sa.String(36), nullable=False),
        sa.Column("period_start", Timestamp, nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("actual_micros", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.id"], name="fk_budget_reservations_budget_id_budgets", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_budget_reservations"),
    )
    op.create_index("ix_budget_reservations_state_expires_at", "budget_reservations", ["state", "expires_at"])
    op.create_index("ix_budget_reservations_budget_id_state", "budget_reservations", ["budget_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_budget_reservations_budget_id_state", table_name="budget_reservations")
    op.drop_index("ix_budget_reservations_state_expires_at", table_name="budget_reservations")
    op.drop_table("budget_reservations")
    op.drop_table("budget_usage")
    op.drop_table("budgets")
