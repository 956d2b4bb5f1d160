"""Initial schema: tenants, agents, capabilities, vector spaces, vectors, change log.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("labels", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_agents_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_agents_tenant_id_name"),
    )
    op.create_table(
        "capabilities",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("examples", Json, nullable=False),
        sa.Column("tags", Json, nullable=False),
        sa.Column("input_modes", Json, nullable=False),
        sa.Column("output_modes", Json, nullable=False),
        sa.Column("cost_per_call_usd", sa.Float(), nullable=False),
        sa.Column("cost_per_1k_input_usd", sa.Float(), nullable=False),
        sa.Column("cost_per_1k_output_usd", sa.Float(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=False),
        sa.Column("quality_prior", sa.Float(), nullable=False),
        sa.Column("regions", Json, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_capabilities_agent_id_agents", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_capabilities"),
        sa.UniqueConstraint("agent_id", "name", "version", name="uq_capabilities_agent_id_name_version"),
    )
    op.create_table(
        "vector_spaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("model_revision", sa.String(128), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vector_spaces"),
        sa.UniqueConstraint("name", name="uq_vector_spaces_name"),
    )
    op.create_table(
        "capability_vectors",
        sa.Column("capability_id", sa.String(36), nullable=False),
        sa.Column("space_id", sa.Integer(), nullable=False),
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["capability_id"],
            ["capabilities.id"],
            name="fk_capability_vectors_capability_id_capabilities",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["vector_spaces.id"],
            name="fk_capability_vectors_space_id_vector_spaces",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("capability_id", "space_id", name="pk_capability_vectors"),
    )
    op.create_index("ix_capability_vectors_space_text", "capability_vectors", ["space_id", "text_sha256"])
    op.create_table(
        "change_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_change_log"),
    )


def downgrade() -> None:
    op.drop_table("change_log")
    op.drop_index("ix_capability_vectors_space_text", table_name="capability_vectors")
    op.drop_table("capability_vectors")
    op.drop_table("vector_spaces")
    op.drop_table("capabilities")
    op.drop_table("agents")
    op.drop_table("tenants")
