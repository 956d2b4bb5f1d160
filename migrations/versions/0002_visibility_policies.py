"""Visibility of agents across tenants, per-tenant default policy effect, and policies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("visibility", sa.String(16), nullable=False, server_default="private"))
        batch.add_column(sa.Column("shared_with", Json, nullable=False, server_default="[]"))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("default_policy_effect", sa.String(8), nullable=False, server_default="allow"))
    op.create_table(
        "policies",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("effect", sa.String(8), nullable=False),
        sa.Column("subject", Json, nullable=False),
        sa.Column("target", Json, nullable=False),
        sa.Column("condition", Json, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_policies_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_policies"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_policies_tenant_id_name"),
    )


def downgrade() -> None:
    op.drop_table("policies")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("default_policy_effect")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("shared_with")
        batch.drop_column("visibility")
