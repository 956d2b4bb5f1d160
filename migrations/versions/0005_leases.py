"""Agent leases: a TTL renewed by heartbeats, and when the current lease runs out.

The change log's gap safety needs no schema change: writers take an advisory lock (see
registry/store/changelog.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("lease_ttl_ms", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_agents_lease_expires_at", ["lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_index("ix_agents_lease_expires_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_ttl_ms")
