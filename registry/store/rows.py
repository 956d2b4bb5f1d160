"""Conversion between table rows and domain objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from registry.domain.models import Agent, AgentKind, AgentStatus, Capability, Cost, VectorSpace, Visibility


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def capability_values(cap: Capability) -> dict[str, Any]:
    """Column values of a capability's caller-supplied fields."""
    return {
        "name": cap.name,
        "version": cap.version,
        "description": cap.description,
        "examples": list(cap.examples),
        "tags": list(cap.tags),
        "input_modes": list(cap.input_modes),
        "output_modes": list(cap.output_modes),
        "cost_per_call_usd": cap.cost.per_call_usd,
        "cost_per_1k_input_usd": cap.cost.per_1k_input_tokens_usd,
        "cost_per_1k_output_usd": cap.cost.per_1k_output_tokens_usd,
        "latency_p50_ms": cap.latency_p50_ms,
        "quality_prior": cap.quality_prior,
        "regions": list(cap.regions),
    }


def capability_from_row(row: Any) -> Capability:
    return Capability(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        description=row["description"],
        examples=tuple(row["examples"]),
        tags=tuple(row["tags"]),
        input_modes=tuple(row["input_modes"]),
        output_modes=tuple(row["output_modes"]),
        cost=Cost(row["cost_per_call_usd"], row["cost_per_1k_input_usd"], row["cost_per_1k_output_usd"]),
        latency_p50_ms=row["latency_p50_ms"],
        quality_prior=row["quality_prior"],
        regions=tuple(row["regions"]),
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
    )


def agent_from_row(row: Any, capabilities: tuple[Capability, ...]) -> Agent:
    return Agent(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        kind=AgentKind(row["kind"]),
        endpoint=row["endpoint"],
        labels=dict(row["labels"]),
        status=AgentStatus(row["status"]),
        description=row["description"],
        capabilities=capabilities,
        visibility=Visibility(row["visibility"]),
        shared_with=tuple(row["shared_with"]),
        generation=row["generation"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        lease_ttl_s=row["lease_ttl_ms"] / 1000.0,
        lease_expires_at=utc(row["lease_expires_at"]) if row["lease_expires_at"] is not None else None,
    )


def space_from_row(row: Any) -> VectorSpace:
    return VectorSpace(
        id=row["id"],
        name=row["name"],
        model=row["model"],
        model_revision=row["model_revision"],
        weights_sha256=row["weights_sha256"],
        template=row["template"],
        dim=row["dim"],
        metric=row["metric"],
        state=row["state"],
        created_at=utc(row["created_at"]),
        ready_at=_maybe_utc(row["ready_at"]),
        serving_at=_maybe_utc(row["serving_at"]),
        retired_at=_maybe_utc(row["retired_at"]),
        failed_at=_maybe_utc(row["failed_at"]),
        previous_serving_id=row["previous_serving_id"],
        shadow_fraction=row["shadow_fraction"],
        error=row["error"],
    )


def _maybe_utc(value: datetime | None) -> datetime | None:
    return utc(value) if value is not None else None
