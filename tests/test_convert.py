"""Round trips between protobuf messages and domain objects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from capreg.v1 import agent_pb2, discovery_pb2
from hypothesis import given
from hypothesis import strategies as st

from registry.domain.models import (
    Agent,
    AgentKind,
    AgentStatus,
    Capability,
    Cost,
    DiscoverFilters,
    DiscoverResult,
    Explanation,
    Match,
    ScoreTerm,
)
from registry.transport import convert

text = st.text(max_size=20)
floats = st.floats(min_value=0, max_value=1e6, allow_nan=False)
capabilities = st.builds(
    Capability,
    name=text,
    version=text,
    description=text,
    examples=st.lists(text, max_size=3).map(tuple),
    tags=st.lists(text, max_size=3).map(tuple),
    input_modes=st.lists(text, max_size=2).map(tuple),
    output_modes=st.lists(text, max_size=2).map(tuple),
    cost=st.builds(Cost, floats, floats, floats),
    latency_p50_ms=floats,
    quality_prior=st.floats(0, 1),
    regions=st.lists(text, max_size=2).map(tuple),
)
agents = st.builds(
    Agent,
    tenant=text,
    name=text,
    kind=st.sampled_from(list(AgentKind)),
    endpoint=text,
    labels=st.dictionaries(text, text, max_size=3),
    status=st.sampled_from([*AgentStatus, None]),
    description=text,
    capabilities=st.lists(capabilities, max_size=3).map(tuple),
)


@given(agents)
def test_agent_round_trip(agent: Agent) -> None:
    assert convert.agent_from_proto(convert.agent_to_proto(agent)) == agent


def test_stored_fields_come_out() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    cap = Capability(name="c", version="1.0.0", id="cap-1", created_at=when, updated_at=when)
    agent = Agent(tenant="t", name="a", kind=AgentKind.TOOL, id="agent-1", generation=7, capabilities=(cap,))
    message = convert.agent_to_proto(replace(agent, status=AgentStatus.ACTIVE, created_at=when, updated_at=when))
    assert message.id == "agent-1" and message.generation == 7
    assert message.capabilities[0].create_time.ToDatetime(tzinfo=UTC) == when
    assert message.status == agent_pb2.AGENT_STATUS_ACTIVE


def test_discover_request_defaults_and_filters() -> None:
    request = discovery_pb2.DiscoverRequest(text="hi", filters=discovery_pb2.DiscoverFilters(max_cost_usd=0.0))
    query = convert.discover_query_from_proto(request)
    assert query.top_k == 5 and query.text == "hi" and query.vector is None
    assert query.estimated_input_tokens == 1000 and query.estimated_output_tokens == 1000
    assert query.filters == DiscoverFilters(max_cost_usd=0.0)  # an explicit 0 is kept, not "unset"
    by_vector = convert.discover_query_from_proto(
        discovery_pb2.DiscoverRequest(vector=agent_pb2.Vector(values=[1.0, 2.0], space="s"), estimated_input_tokens=0)
    )
    assert list(by_vector.vector or []) == [1.0, 2.0] and by_vector.vector_space == "s"
    assert by_vector.estimated_input_tokens == 0


def test_discover_result_with_a_capability_cache() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    cap = Capability(name="c", version="1.0.0", id="cap-1", updated_at=when, created_at=when)
    match = Match(
        agent_id="a", agent_name="n", tenant="t", kind=AgentKind.MODEL, endpoint="e", labels={"k": "v"},
        capability=cap, similarity=0.5, score=0.6, estimated_cost_usd=0.01,
        score_terms=(ScoreTerm("similarity", 0.5, 0.9),),
    )  # fmt: skip
    result = DiscoverResult(
        matches=(match, match),
        explanation=Explanation(3, 2, "exact", {"total": 1.0}, {"status": 1}),
        vector_space="s",
        watermark=9,
    )
    cache = convert.CapabilityProtoCache(max_entries=1)
    cached = convert.discover_result_to_proto(result, cache)
    assert cached == convert.discover_result_to_proto(result)
    assert cached.matches[1].capability.name == "c" and cached.explanation.exclusions[0].reason == "status"
    changed = replace(cap, description="new", updated_at=datetime(2026, 1, 3, tzinfo=UTC))
    assert cache.get(changed).description == "new"
