"""Table definitions. Migrations in migrations/ create them; create_all is used only by model tests."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite autoincrements only INTEGER PRIMARY KEY columns.
SeqInt = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("created_at", Timestamp, nullable=False),
    Column("default_policy_effect", String(8), nullable=False, server_default="allow"),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("endpoint", String(2048), nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("labels", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("visibility", String(16), nullable=False, server_default="private"),
    Column("shared_with", Json, nullable=False, server_default="[]"),  # tenants that see a shared agent
    Column("lease_ttl_ms", BigInteger, nullable=False, server_default="0"),  # 0: no lease
    Column("lease_expires_at", Timestamp, nullable=True),
    UniqueConstraint("tenant_id", "name", name="uq_agents_tenant_id_name"),
    Index("ix_agents_lease_expires_at", "lease_expires_at"),
)

capabilities = Table(
    "capabilities",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("agent_id", String(36), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("examples", Json, nullable=False),
    Column("tags", Json, nullable=False),
    Column("input_modes", Json, nullable=False),
    Column("output_modes", Json, nullable=False),
    Column("cost_per_call_usd", Float, nullable=False),
    Column("cost_per_1k_input_usd", Float, nullable=False),
    Column("cost_per_1k_output_usd", Float, nullable=False),
    Column("latency_p50_ms", Float, nullable=False),
    Column("quality_prior", Float, nullable=False),
    Column("regions", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("agent_id", "name", "version", name="uq_capabilities_agent_id_name_version"),
)

vector_spaces = Table(
    "vector_spaces",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("model", String(256), nullable=False),
    Column("model_revision", String(128), nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("template", Text, nullable=False),
    Column("dim", Integer, nullable=False),
    Column("metric", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("ready_at", Timestamp, nullable=True),
    Column("serving_at", Timestamp, nullable=True),
    Column("retired_at", Timestamp, nullable=True),
    Column("failed_at", Timestamp, nullable=True),
    Column("previous_serving_id", Integer, nullable=True),  # what `rollback` returns to
    Column("shadow_fraction", Float, nullable=False, server_default="0"),
    Column("error", Text, nullable=False, server_default=""),
)

capability_vectors = Table(
    "capability_vectors",
    metadata,
    Column("capability_id", String(36), ForeignKey("capabilities.id", ondelete="CASCADE"), primary_key=True),
    Column("space_id", Integer, ForeignKey("vector_spaces.id", ondelete="CASCADE"), primary_key=True),
    Column("text_sha256", String(64), nullable=False),
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian, `dim` values
    Column("created_at", Timestamp, nullable=False),
    Index("ix_capability_vectors_space_text", "space_id", "text_sha256"),
)

change_log = Table(
    "change_log",
    metadata,
    Column("seq", SeqInt, primary_key=True, autoincrement=True),
    Column("tenant_id", String(63), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("entity_id", String(64), nullable=False),
    Column("op", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("effect", String(8), nullable=False),  # allow | deny
    Column("subject", Json, nullable=False),
    Column("target", Json, nullable=False),
    Column("condition", Json, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_policies_tenant_id_name"),
)

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

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the public part of the key
    Column("tenant_id", String(63), nullable=False),  # "*" for a cluster operator
    Column("name", String(128), nullable=False),
    Column("roles", Json, nullable=False),
    Column("secret_sha256", String(64), nullable=False),  # never the secret itself
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", SeqInt, primary_key=True, autoincrement=True),
    Column("at", Timestamp, nullable=False),
    Column("tenant_id", String(63), nullable=False),
    Column("actor", String(160), nullable=False),  # key id and name, or "local" without authentication
    Column("action", String(64), nullable=False),  # the RPC, e.g. RegistryService.RegisterAgent
    Column("entity", String(32), nullable=False),
    Column("entity_id", String(160), nullable=False),
    Column("details", Json, nullable=False),
    Index("ix_audit_log_tenant_id_at", "tenant_id", "at"),
)

# How a capability did on a task (OutcomeService.ReportOutcome); Discover learns from them per tenant and space.
outcomes = Table(
    "outcomes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(63), nullable=False),
    Column("capability_id", String(36), ForeignKey("capabilities.id", ondelete="CASCADE"), nullable=False),
    Column("agent_id", String(36), nullable=False),
    Column("space_id", Integer, ForeignKey("vector_spaces.id", ondelete="CASCADE"), nullable=False),
    Column("task_vector", LargeBinary, nullable=False),  # float32, little-endian, the space's `dim` values
    Column("task_text", Text, nullable=True),
    Column("score", Float, nullable=False),  # 0..1 (success is 1, failure 0)
    Column("latency_ms", Float, nullable=True),
    Column("cost_usd", Float, nullable=True),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_outcomes_capability_id_created_at", "capability_id", "created_at"),
    Index("ix_outcomes_space_id_tenant_id", "space_id", "tenant_id"),
)

# The A2A Agent Card or MCP server.json an agent was imported from (JSON text), so that an export keeps what
# capreg does not model (security schemes, signatures, packages); the agent's rows stay the truth.
agent_documents = Table(
    "agent_documents",
    metadata,
    Column("agent_id", String(36), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("format", String(16), nullable=False),  # "a2a-0.3", "a2a-1.0" or "mcp-server"
    Column("document", Text, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
