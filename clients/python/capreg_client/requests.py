"""Request builders shared by the sync and asyncio clients, so both speak exactly the same API."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capreg.v1 import agent_pb2, discovery_pb2, outcome_pb2, policy_pb2, registry_pb2

KIND_NAMES = {
    "model": agent_pb2.AGENT_KIND_MODEL,
    "agent": agent_pb2.AGENT_KIND_AGENT,
    "tool": agent_pb2.AGENT_KIND_TOOL,
}
STATUS_NAMES = {
    "active": agent_pb2.AGENT_STATUS_ACTIVE,
    "draining": agent_pb2.AGENT_STATUS_DRAINING,
    "inactive": agent_pb2.AGENT_STATUS_INACTIVE,
}


def kind_value(kind: str | int) -> agent_pb2.AgentKind.ValueType:
    if isinstance(kind, int):
        return agent_pb2.AgentKind.ValueType(kind)
    try:
        return KIND_NAMES[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; use one of {sorted(KIND_NAMES)}") from None


def status_value(status: str | int) -> agent_pb2.AgentStatus.ValueType:
    if isinstance(status, int):
        return agent_pb2.AgentStatus.ValueType(status)
    try:
        return STATUS_NAMES[status.lower()]
    except KeyError:
        raise ValueError(f"unknown status {status!r}; use one of {sorted(STATUS_NAMES)}") from None


def agent_ref(id: str = "", tenant: str = "", name: str = "") -> agent_pb2.AgentRef:
    return agent_pb2.AgentRef(id=id, tenant=tenant, name=name)


def list_agents(
    tenant: str = "",
    page_size: int = 0,
    page_token: str = "",
    kinds: Iterable[str | int] = (),
    status: str | int | None = None,
    labels: Mapping[str, str] | None = None,
    name_prefix: str = "",
) -> registry_pb2.ListAgentsRequest:
    return registry_pb2.ListAgentsRequest(
        tenant=tenant,
        page_size=page_size,
        page_token=page_token,
        kinds=[kind_value(k) for k in kinds],
        status=status_value(status) if status is not None else agent_pb2.AGENT_STATUS_UNSPECIFIED,
        labels=dict(labels or {}),
        name_prefix=name_prefix,
    )


def discover(
    text: str | None = None,
    *,
    vector: Sequence[float] | None = None,
    space: str = "",
    top_k: int = 0,
    tenant: str = "",
    filters: discovery_pb2.DiscoverFilters | None = None,
    estimated_input_tokens: int | None = None,
    estimated_output_tokens: int | None = None,
    task_labels: Mapping[str, str] | None = None,
    budget_id: str = "",
    min_seq: int = 0,
    cost_preference: float | None = None,
    latency_preference: float | None = None,
    exploration_rate: float | None = None,
) -> discovery_pb2.DiscoverRequest:
    if (text is None) == (vector is None):
        raise ValueError("give exactly one of text or vector")
    request = discovery_pb2.DiscoverRequest(
        tenant=tenant,
        top_k=top_k,
        filters=filters,
        task_labels=dict(task_labels or {}),
        budget_id=budget_id,
        min_seq=min_seq,
    )
    if text is not None:
        request.text = text
        request.vector_space = space
    else:
        request.vector.values.extend(vector or ())
        request.vector.space = space
    if estimated_input_tokens is not None:
        request.estimated_input_tokens = estimated_input_tokens
    if estimated_output_tokens is not None:
        request.estimated_output_tokens = estimated_output_tokens
    if cost_preference is not None:
        request.cost_preference = cost_preference
    if latency_preference is not None:
        request.latency_preference = latency_preference
    if exploration_rate is not None:
        request.exploration_rate = exploration_rate
    return request


def report_outcome(
    capability_id: str,
    *,
    success: bool | None = None,
    score: float | None = None,
    discover_id: str = "",
    text: str | None = None,
    vector: Sequence[float] | None = None,
    space: str = "",
    tenant: str = "",
    latency_ms: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cost_usd: float | None = None,
) -> outcome_pb2.ReportOutcomeRequest:
    if sum((bool(discover_id), text is not None, vector is not None)) != 1:
        raise ValueError("give exactly one of discover_id, text or vector")
    request = outcome_pb2.ReportOutcomeRequest(tenant=tenant, capability_id=capability_id)
    if discover_id:
        request.discover_id = discover_id
    elif text is not None:
        request.text = text
        request.vector_space = space
    else:
        request.vector.values.extend(vector or ())
        request.vector.space = space
    for name, value in (
        ("success", success),
        ("score", score),
        ("latency_ms", latency_ms),
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("cost_usd", cost_usd),
    ):
        if value is not None:
            setattr(request, name, value)
    return request


def caller_metadata(principal: str = "", roles: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """Who is calling, as metadata headers (until API keys carry it)."""
    headers = []
    if principal:
        headers.append(("x-capreg-principal", principal))
    roles = list(roles)
    if roles:
        headers.append(("x-capreg-roles", ",".join(roles)))
    return tuple(headers)


EFFECT_NAMES = {"allow": policy_pb2.POLICY_EFFECT_ALLOW, "deny": policy_pb2.POLICY_EFFECT_DENY}


def effect_value(effect: str | int) -> policy_pb2.PolicyEffect.ValueType:
    if isinstance(effect, int):
        return policy_pb2.PolicyEffect.ValueType(effect)
    try:
        return EFFECT_NAMES[effect.lower()]
    except KeyError:
        raise ValueError(f"unknown effect {effect!r}; use allow or deny") from None


def heartbeat(
    id: str = "", tenant: str = "", name: str = "", lease_ttl_s: float | None = None
) -> registry_pb2.HeartbeatRequest:
    """A HeartbeatRequest; lease_ttl_s None keeps the stored TTL."""
    request = registry_pb2.HeartbeatRequest(agent=agent_ref(id, tenant, name))
    if lease_ttl_s is not None:
        request.lease_ttl.FromNanoseconds(round(lease_ttl_s * 1e9))
    return request


VISIBILITY_NAMES = {
    "private": agent_pb2.VISIBILITY_PRIVATE,
    "shared": agent_pb2.VISIBILITY_SHARED,
    "public": agent_pb2.VISIBILITY_PUBLIC,
}


def document_text(document: str | Mapping[str, Any]) -> str:
    """A JSON document as text: given as text already, or as a parsed object."""
    return document if isinstance(document, str) else json.dumps(document)


def import_options(
    visibility: str = "",
    shared_with: Sequence[str] = (),
    lease_ttl_s: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> registry_pb2.ImportOptions:
    options = registry_pb2.ImportOptions(shared_with=list(shared_with), labels=dict(labels or {}))
    if visibility:
        try:
            options.visibility = VISIBILITY_NAMES[visibility.lower()]
        except KeyError:
            raise ValueError(f"unknown visibility {visibility!r}; use one of {sorted(VISIBILITY_NAMES)}") from None
    if lease_ttl_s is not None:
        options.lease_ttl.FromNanoseconds(int(lease_ttl_s * 1e9))
    return options
