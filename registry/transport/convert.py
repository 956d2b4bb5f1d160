"""Every conversion between protobuf messages and domain objects, in one place."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime

from capreg.v1 import agent_pb2, discovery_pb2, registry_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from registry.domain.errors import InvalidArgument
from registry.domain.models import (
    DEFAULT_ESTIMATED_TOKENS,
    DEFAULT_QUALITY_PRIOR,
    Agent,
    AgentKind,
    AgentRef,
    AgentStatus,
    Capability,
    Cost,
    DiscoverFilters,
    DiscoverQuery,
    DiscoverResult,
    ListAgentsQuery,
    Match,
    Visibility,
)

DEFAULT_TOP_K = 5
DEFAULT_PAGE_SIZE = 50

KIND_FROM_PROTO = {
    agent_pb2.AGENT_KIND_MODEL: AgentKind.MODEL,
    agent_pb2.AGENT_KIND_AGENT: AgentKind.AGENT,
    agent_pb2.AGENT_KIND_TOOL: AgentKind.TOOL,
}
KIND_TO_PROTO = {kind: number for number, kind in KIND_FROM_PROTO.items()}
STATUS_FROM_PROTO = {
    agent_pb2.AGENT_STATUS_ACTIVE: AgentStatus.ACTIVE,
    agent_pb2.AGENT_STATUS_DRAINING: AgentStatus.DRAINING,
    agent_pb2.AGENT_STATUS_INACTIVE: AgentStatus.INACTIVE,
}
STATUS_TO_PROTO = {status: number for number, status in STATUS_FROM_PROTO.items()}
VISIBILITY_FROM_PROTO = {
    agent_pb2.VISIBILITY_PRIVATE: Visibility.PRIVATE,
    agent_pb2.VISIBILITY_SHARED: Visibility.SHARED,
    agent_pb2.VISIBILITY_PUBLIC: Visibility.PUBLIC,
}
VISIBILITY_TO_PROTO = {visibility: number for number, visibility in VISIBILITY_FROM_PROTO.items()}


def visibility_from_proto(value: int, field: str) -> Visibility | None:
    if value == agent_pb2.VISIBILITY_UNSPECIFIED:
        return None
    try:
        return VISIBILITY_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown visibility {value}; use PRIVATE, SHARED or PUBLIC") from None


def kind_from_proto(value: int, field: str) -> AgentKind:
    try:
        return KIND_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown agent kind {value}; use MODEL, AGENT or TOOL") from None


def status_from_proto(value: int, field: str, *, allow_unspecified: bool = False) -> AgentStatus | None:
    if value == agent_pb2.AGENT_STATUS_UNSPECIFIED and allow_unspecified:
        return None
    try:
        return STATUS_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown agent status {value}; use ACTIVE, DRAINING or INACTIVE") from None


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(seconds_: float) -> Duration:
    whole = int(seconds_)
    return Duration(seconds=whole, nanos=round((seconds_ - whole) * 1e9))


def seconds(value: Duration) -> float:
    """A Duration as float seconds; its range is checked where the field's meaning is known."""
    return value.seconds + value.nanos / 1e9


def datetime_from_proto(value: Timestamp, field: str) -> datetime:
    """A timestamp sent by a caller, in UTC; one that no datetime can hold is the caller's error."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            field, "is not a valid timestamp: seconds from 0001-01-01 to 9999-12-31 UTC, nanos 0 to 999999999"
        ) from None


# -- agents ------------------------------------------------------------------------------------------


def capability_from_proto(msg: agent_pb2.Capability) -> Capability:
    return Capability(
        name=msg.name,
        version=msg.version,
        description=msg.description,
        examples=tuple(msg.examples),
        tags=tuple(msg.tags),
        input_modes=tuple(msg.input_modes),
        output_modes=tuple(msg.output_modes),
        cost=Cost(msg.cost.per_call_usd, msg.cost.per_1k_input_tokens_usd, msg.cost.per_1k_output_tokens_usd),
        latency_p50_ms=msg.latency_p50_ms,
        quality_prior=msg.quality_prior if msg.HasField("quality_prior") else DEFAULT_QUALITY_PRIOR,
        regions=tuple(msg.regions),
        supplied_vector=tuple(msg.vector.values) if msg.HasField("vector") else None,
        supplied_vector_space=msg.vector.space,
    )


def agent_from_proto(msg: agent_pb2.Agent, field: str = "agent") -> Agent:
    return Agent(
        tenant=msg.tenant,
        name=msg.name,
        kind=kind_from_proto(msg.kind, f"{field}.kind"),
        endpoint=msg.endpoint,
        labels=dict(msg.labels),
        status=status_from_proto(msg.status, f"{field}.status", allow_unspecified=True),
        description=msg.description,
        capabilities=tuple(capability_from_proto(c) for c in msg.capabilities),
        visibility=visibility_from_proto(msg.visibility, f"{field}.visibility"),
        shared_with=tuple(msg.shared_with),
        lease_ttl_s=seconds(msg.lease_ttl) if msg.HasField("lease_ttl") else None,
    )


def capability_to_proto(cap: Capability) -> agent_pb2.Capability:
    return agent_pb2.Capability(
        id=cap.id,
        name=cap.name,
        version=cap.version,
        description=cap.description,
        examples=cap.examples,
        tags=cap.tags,
        input_modes=cap.input_modes,
        output_modes=cap.output_modes,
        cost=agent_pb2.Cost(
            per_call_usd=cap.cost.per_call_usd,
            per_1k_input_tokens_usd=cap.cost.per_1k_input_tokens_usd,
            per_1k_output_tokens_usd=cap.cost.per_1k_output_tokens_usd,
        ),
        latency_p50_ms=cap.latency_p50_ms,
        quality_prior=cap.quality_prior,
        regions=cap.regions,
        create_time=timestamp(cap.created_at),
        update_time=timestamp(cap.updated_at),
    )


def agent_to_proto(agent: Agent) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        id=agent.id,
        tenant=agent.tenant,
        name=agent.name,
        kind=KIND_TO_PROTO[agent.kind],
        endpoint=agent.endpoint,
        labels=agent.labels,
        status=STATUS_TO_PROTO[agent.status] if agent.status else agent_pb2.AGENT_STATUS_UNSPECIFIED,
        description=agent.description,
        capabilities=[capability_to_proto(c) for c in agent.capabilities],
        visibility=VISIBILITY_TO_PROTO[agent.visibility] if agent.visibility else agent_pb2.VISIBILITY_UNSPECIFIED,
        shared_with=agent.shared_with,
        generation=agent.generation,
        create_time=timestamp(agent.created_at),
        update_time=timestamp(agent.updated_at),
        lease_ttl=duration(agent.lease_ttl_s) if agent.lease_ttl_s else None,
        lease_expire_time=timestamp(agent.lease_expires_at) if agent.lease_expires_at else None,
    )


def ref_from_proto(msg: agent_pb2.AgentRef) -> AgentRef:
    return AgentRef(id=msg.id, tenant=msg.tenant, name=msg.name)


def list_query_from_proto(msg: registry_pb2.ListAgentsRequest) -> ListAgentsQuery:
    from registry.domain.validation import tenant_or_default

    return ListAgentsQuery(
        tenant=tenant_or_default(msg.tenant, "tenant"),
        page_size=msg.page_size or DEFAULT_PAGE_SIZE,
        page_token=msg.page_token,
        kinds=tuple(kind_from_proto(k, f"kinds[{i}]") for i, k in enumerate(msg.kinds)),
        status=status_from_proto(msg.status, "status", allow_unspecified=True),
        labels=dict(msg.labels),
        name_prefix=msg.name_prefix,
    )


# -- discovery ---------------------------------------------------------------------------------------


def filters_from_proto(msg: discovery_pb2.DiscoverFilters) -> DiscoverFilters:
    return DiscoverFilters(
        kinds=tuple(kind_from_proto(k, f"filters.kinds[{i}]") for i, k in enumerate(msg.kinds)),
        tags_all=tuple(msg.tags_all),
        tags_any=tuple(msg.tags_any),
        regions=tuple(msg.regions),
        input_modes=tuple(msg.input_modes),
        output_modes=tuple(msg.output_modes),
        max_cost_usd=msg.max_cost_usd if msg.HasField("max_cost_usd") else None,
        max_latency_ms=msg.max_latency_ms if msg.HasField("max_latency_ms") else None,
        min_quality=msg.min_quality if msg.HasField("min_quality") else None,
        labels=dict(msg.labels),
        capability_name=msg.capability_name,
    )


def discover_query_from_proto(msg: discovery_pb2.DiscoverRequest) -> DiscoverQuery:
    from registry.domain.validation import check_name

    which = msg.WhichOneof("query")
    if which == "vector" and msg.vector.space:
        check_name(msg.vector.space, "vector.space")  # checked here, where its name in the request is known
    return DiscoverQuery(
        tenant=msg.tenant,
        text=msg.text if which == "text" else None,
        vector=msg.vector.values if which == "vector" else None,
        vector_space=msg.vector.space if which == "vector" else msg.vector_space,
        top_k=msg.top_k or DEFAULT_TOP_K,
        filters=filters_from_proto(msg.filters),
        estimated_input_tokens=(
            msg.estimated_input_tokens if msg.HasField("estimated_input_tokens") else DEFAULT_ESTIMATED_TOKENS
        ),
        estimated_output_tokens=(
            msg.estimated_output_tokens if msg.HasField("estimated_output_tokens") else DEFAULT_ESTIMATED_TOKENS
        ),
        task_labels=dict(msg.task_labels),
        budget_id=msg.budget_id,
        min_seq=msg.min_seq,
        cost_preference=msg.cost_preference,
        latency_preference=msg.latency_preference,
        exploration_rate=msg.exploration_rate,
    )


class CapabilityProtoCache:
    """Converted capabilities, reused across Discover answers: the same few capabilities answer most
    tasks, and building each message (timestamps included) costs more than copying it."""

    def __init__(self, max_entries: int = 20_000):
        self._entries: OrderedDict[tuple[str, datetime | None], agent_pb2.Capability] = OrderedDict()
        self._max = max_entries

    def get(self, cap: Capability) -> agent_pb2.Capability:
        key = (cap.id, cap.updated_at)
        message = self._entries.get(key)
        if message is None:
            message = capability_to_proto(cap)
            self._entries[key] = message
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return message


def match_to_proto(match: Match, cache: CapabilityProtoCache | None = None) -> discovery_pb2.Match:
    return discovery_pb2.Match(
        agent_id=match.agent_id,
        agent_name=match.agent_name,
        tenant=match.tenant,
        kind=KIND_TO_PROTO[match.kind],
        endpoint=match.endpoint,
        labels=match.labels,
        capability=cache.get(match.capability) if cache else capability_to_proto(match.capability),
        similarity=match.similarity,
        score=match.score,
        estimated_cost_usd=match.estimated_cost_usd,
        score_terms=[discovery_pb2.ScoreTerm(name=t.name, value=t.value, weight=t.weight) for t in match.score_terms],
    )


def discover_result_to_proto(
    result: DiscoverResult, cache: CapabilityProtoCache | None = None
) -> discovery_pb2.DiscoverResponse:
    exp = result.explanation
    return discovery_pb2.DiscoverResponse(
        matches=[match_to_proto(m, cache) for m in result.matches],
        explanation=discovery_pb2.Explanation(
            candidates_total=exp.candidates_total,
            candidates_allowed=exp.candidates_allowed,
            plan=exp.plan,
            timings=[discovery_pb2.StageTiming(stage=s, ms=ms) for s, ms in exp.timings_ms.items()],
            exclusions=[discovery_pb2.Exclusion(reason=r, count=c) for r, c in exp.exclusions.items()],
            hnsw_ef=exp.hnsw_ef,
            hnsw_rounds=exp.hnsw_rounds,
        ),
        vector_space=result.vector_space,
        watermark=result.watermark,
        discover_id=result.discover_id,
    )
