"""TEMPORARY during development: moved into tables.py at the end."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, Index, String, Table, UniqueConstraint

from registry.store.tables import Timestamp, metadata

# Money is integer micro-dollars (see migrations/versions/0003_budgets.py).
budgets = Table(
    "budgets",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("scope", String(16), nullable=False),  # tenant | principal | project
    Column("scope_id", String(128), nullable=False),
    Column("period", String(8), nullable=False),  # day | month | total
    Column("limit_micros", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_budgets_tenant_id_name"),
    CheckConstraint("limit_micros >= 0", name="limit_nonnegative"),
)

budget_usage = Table(
    "budget_usage",
    metadata,
    Column("budget_id", String(36), ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", Timestamp, primary_key=True),
    Column("committed_micros", BigInteger, nullable=False),
    Column("reserved_micros", BigInteger, nullable=False),
    CheckConstraint("committed_micros >= 0", name="committed_nonnegative"),
    CheckConstraint("reserved_micros >= 0", name="reserved_nonnegative"),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("budget_id", String(36), ForeignKey("budgets.id", ondelete="CASCADE"), nullable=False),
    Column("period_start", Timestamp, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("actual_micros", BigInteger, nullable=True),
    Column("state", String(16), nullable=False),  # held | committed | released | expired
    Column("expires_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_budget_reservations_state_expires_at", "state", "expires_at"),
    Index("ix_budget_reservations_budget_id_state", "budget_id", "state"),
)
