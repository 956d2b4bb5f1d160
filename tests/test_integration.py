"""The registry end to end through the Python client against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from capreg.v1 import agent_pb2, discovery_pb2
from capreg_client import CapregClient, ConflictError, NotFoundError

from tests.support import make_agent, make_capability


def test_register_then_discover_finds_the_agent(client: CapregClient) -> None:
    translator = make_agent(
        "deutsch-translator",
        make_capability(
            "translate-document",
            description="Translates business documents and contracts from German into English.",
            examples=["Translate this German contract into English", "Übersetze diesen Vertrag"],
        ),
    )
    reviewer = make_agent(
        "code-reviewer",
        make_capability("review-code", description="Reviews pull requests for bugs.", examples=["review my PR"]),
    )
    first = client.register_agent(translator)
    assert first.created and first.changed and first.consistency_token > 0
    assert first.agent.generation == 1 and first.agent.status == agent_pb2.AGENT_STATUS_ACTIVE
    client.register_agent(reviewer)

    answer = client.discover("translate this German supply contract into English", top_k=2)
    assert [m.agent_name for m in answer.matches] == ["deutsch-translator", "code-reviewer"]
    top = answer.matches[0]
    assert top.capability.name == "translate-document"
    assert top.similarity > answer.matches[1].similarity
    assert top.estimated_cost_usd == pytest.approx(0.001)
    assert answer.explanation.candidates_total == 2 and answer.explanation.plan == "exact"
    assert answer.watermark >= first.consistency_token


def test_register_is_an_idempotent_upsert(client: CapregClient) -> None:
    agent = make_agent("idem")
    first = client.register_agent(agent)
    again = client.register_agent(agent)
    assert not again.created and not again.changed
    # Unchanged, it still answers a token: the newest change it read, so min_seq on a replica works.
    assert again.consistency_token >= first.consistency_token > 0
    assert again.agent.generation == first.agent.generation == 1
    assert again.agent.capabilities[0].id == first.agent.capabilities[0].id

    agent.capabilities[0].description = "Summarizes long documents into a page."
    changed = client.register_agent(agent)
    assert changed.changed and changed.agent.generation == 2
    assert changed.consistency_token > first.consistency_token
    assert changed.agent.capabilities[0].id == first.agent.capabilities[0].id


def test_several_versions_live_and_removed_versions_disappear(client: CapregClient) -> None:
    v1 = make_capability("classify", "1.0.0", description="Classifies support tickets by urgency.")
    v2 = make_capability("classify", "2.0.0", description="Classifies support tickets by urgency and topic.")
    client.register_agent(make_agent("triage", v1, v2))
    answer = client.discover("classify this support ticket", top_k=5)
    assert sorted(m.capability.version for m in answer.matches) == ["1.0.0", "2.0.0"]

    client.register_agent(make_agent("triage", v2))
    answer = client.discover("classify this support ticket", top_k=5)
    assert [m.capability.version for m in answer.matches] == ["2.0.0"]
    assert [c.version for c in client.get_agent("triage").capabilities] == ["2.0.0"]


def test_generation_guards_concurrent_writers(client: CapregClient) -> None:
    created = client.register_agent(make_agent("guarded")).agent
    client.update_agent_status("guarded", "draining", expected_generation=created.generation)
    with pytest.raises(ConflictError) as err:
        client.register_agent(make_agent("guarded"), expected_generation=created.generation)
    assert err.value.code == grpc.StatusCode.ABORTED
    with pytest.raises(ConflictError):
        client.deregister_agent("guarded", expected_generation=created.generation)
    assert client.get_agent("guarded").generation == created.generation + 1


def test_status_controls_discover(client: CapregClient) -> None:
    client.register_agent(make_agent("drainer"))
    assert [m.agent_name for m in client.discover("summarize this").matches] == ["drainer"]
    response = client.update_agent_status("drainer", "draining")
    assert response.agent.status == agent_pb2.AGENT_STATUS_DRAINING
    answer = client.discover("summarize this")
    assert list(answer.matches) == []
    assert {e.reason: e.count for e in answer.explanation.exclusions} == {"status": 1}
    # Re-registering without a status keeps the stored one.
    client.register_agent(make_agent("drainer"))
    assert client.get_agent("drainer").status == agent_pb2.AGENT_STATUS_DRAINING
    client.update_agent_status("drainer", "active")
    assert [m.agent_name for m in client.discover("summarize this").matches] == ["drainer"]


def test_deregister_removes_from_discover_and_store(client: CapregClient) -> None:
    client.register_agent(make_agent("gone"))
    client.register_agent(make_agent("stays", make_capability("translate", description="Translates text.")))
    token = client.deregister_agent("gone").consistency_token
    assert token > 0
    answer = client.discover("summarize this", top_k=10)
    assert [m.agent_name for m in answer.matches] == ["stays"]
    with pytest.raises(NotFoundError):
        client.get_agent("gone")
    with pytest.raises(NotFoundError):
        client.deregister_agent("gone")


def test_get_by_id_and_tenants_are_separate(client: CapregClient) -> None:
    ours = client.register_agent(make_agent("shared-name", tenant="acme")).agent
    theirs = client.register_agent(make_agent("shared-name", tenant="globex")).agent
    assert ours.id != theirs.id
    assert client.get_agent(id=ours.id).tenant == "acme"
    assert client.get_agent("shared-name", tenant="globex").id == theirs.id
    assert [m.agent_id for m in client.discover("summarize this", tenant="acme").matches] == [ours.id]
    assert [a.name for a in client.iter_agents(tenant="default")] == []


def test_list_agents_pages_and_filters(client: CapregClient) -> None:
    for i in range(7):
        kind = agent_pb2.AGENT_KIND_TOOL if i % 2 else agent_pb2.AGENT_KIND_MODEL
        client.register_agent(make_agent(f"agent-{i}", kind=kind, labels={"team": "red" if i < 3 else "blue"}))
    first = client.list_agents(page_size=3)
    assert [a.name for a in first.agents] == ["agent-0", "agent-1", "agent-2"]
    assert first.next_page_token
    names = [a.name for a in client.iter_agents(page_size=3)]
    assert names == [f"agent-{i}" for i in range(7)]
    tools = [a.name for a in client.iter_agents(kinds=["tool"], page_size=2)]
    assert tools == ["agent-1", "agent-3", "agent-5"]
    assert [a.name for a in client.iter_agents(labels={"team": "red"})] == ["agent-0", "agent-1", "agent-2"]
    assert [a.name for a in client.iter_agents(name_prefix="agent-6")] == ["agent-6"]
    client.update_agent_status("agent-4", "inactive")
    assert [a.name for a in client.iter_agents(status="inactive")] == ["agent-4"]


def test_discover_filters(client: CapregClient) -> None:
    cheap = make_capability(
        "summarize",
        description="Summarizes documents.",
        cost=agent_pb2.Cost(per_1k_input_tokens_usd=0.0001),
        regions=["us-east-1"],
        tags=["nlp", "cheap"],
        latency_p50_ms=200,
        quality_prior=0.6,
    )
    dear = make_capability(
        "summarize",
        description="Summarizes documents carefully.",
        cost=agent_pb2.Cost(per_1k_input_tokens_usd=0.01),
        regions=["eu-west-1"],
        tags=["nlp"],
        latency_p50_ms=2000,
        quality_prior=0.95,
        input_modes=["text", "application/pdf"],
    )
    client.register_agent(
        make_agent("cheap-summarizer", cheap, kind=agent_pb2.AGENT_KIND_MODEL, labels={"tier": "free"})
    )
    client.register_agent(make_agent("dear-summarizer", dear, kind=agent_pb2.AGENT_KIND_AGENT))

    def names(**filters: Any) -> list[str]:
        answer = client.discover("summarize this report", top_k=5, filters=discovery_pb2.DiscoverFilters(**filters))
        return sorted(m.agent_name for m in answer.matches)

    both = ["cheap-summarizer", "dear-summarizer"]
    assert names() == both
    assert names(kinds=[agent_pb2.AGENT_KIND_MODEL]) == ["cheap-summarizer"]
    assert names(tags_all=["nlp", "cheap"]) == ["cheap-summarizer"]
    assert names(tags_any=["cheap", "missing"]) == ["cheap-summarizer"]
    assert names(regions=["eu-west-1"]) == ["dear-summarizer"]
    assert names(input_modes=["application/pdf"]) == ["dear-summarizer"]
    assert names(max_cost_usd=0.001) == ["cheap-summarizer"]
    assert names(max_latency_ms=500) == ["cheap-summarizer"]
    assert names(min_quality=0.9) == ["dear-summarizer"]
    assert names(labels={"tier": "free"}) == ["cheap-summarizer"]
    assert names(capability_name="summarize") == both
    assert names(capability_name="other") == []


def test_discover_by_vector_and_own_vectors(client: CapregClient, server: object) -> None:
    dim = 384
    east = [1.0] + [0.0] * (dim - 1)
    north = [0.0, 1.0] + [0.0] * (dim - 2)
    client.register_agent(make_agent("east", make_capability("go-east", vector=agent_pb2.Vector(values=east))))
    client.register_agent(make_agent("north", make_capability("go-north", vector=agent_pb2.Vector(values=north))))
    answer = client.discover(vector=[0.9, 0.1] + [0.0] * (dim - 2), top_k=2)
    assert [m.agent_name for m in answer.matches] == ["east", "north"]
    assert answer.matches[0].similarity == pytest.approx(0.9 / (0.82**0.5), abs=1e-5)
    assert answer.vector_space == "minilm-l6-v2"


def test_survives_restart_without_reembedding(database_url: str, tmp_path: object, embedder: object) -> None:
    from pathlib import Path

    from tests.support import running_server

    data = Path(str(tmp_path)) / "data"
    with running_server(data, database_url, embedder) as first, CapregClient(first.target) as c:  # type: ignore[arg-type]
        c.register_agent(make_agent("durable", make_capability("translate", description="Translates text.")))
        before = c.discover("translate this text").matches[0]

    class NoEmbedding:
        model_name = embedder.model_name  # type: ignore[attr-defined]
        model_revision = embedder.model_revision  # type: ignore[attr-defined]
        weights_sha256 = embedder.weights_sha256  # type: ignore[attr-defined]
        dim = embedder.dim  # type: ignore[attr-defined]

        def embed(self, texts: object) -> object:
            raise AssertionError("the index must be rebuilt from stored vectors")

    with running_server(data, database_url, NoEmbedding()) as second, CapregClient(second.target) as c:  # type: ignore[arg-type]
        after = c.discover(vector=list(embedder.embed(["translate this text"])[0])).matches[0]  # type: ignore[attr-defined]
        assert after.agent_name == "durable"
        assert after.similarity == pytest.approx(before.similarity, abs=1e-5)
        c.register_agent(make_agent("durable", make_capability("translate", description="Translates text.")))


def test_visibility_private_shared_public(client: CapregClient) -> None:
    private = client.register_agent(make_agent("p", tenant="acme")).agent
    assert private.visibility == agent_pb2.VISIBILITY_PRIVATE
    client.register_agent(
        make_agent("s", tenant="acme", visibility=agent_pb2.VISIBILITY_SHARED, shared_with=["globex"])
    )
    client.register_agent(make_agent("pub", tenant="acme", visibility=agent_pb2.VISIBILITY_PUBLIC))

    def seen_by(tenant: str) -> list[str]:
        return sorted(m.agent_name for m in client.discover("summarize this", tenant=tenant, top_k=10).matches)

    assert seen_by("acme") == ["p", "pub", "s"]
    assert seen_by("globex") == ["pub", "s"]
    assert seen_by("initech") == ["pub"]
    answer = client.discover("summarize this", tenant="initech", top_k=10)
    assert {e.reason: e.count for e in answer.explanation.exclusions} == {"visibility": 2}
    # Re-registering without a visibility keeps the stored one; narrowing it takes effect at once.
    client.register_agent(make_agent("pub", tenant="acme"))
    assert seen_by("initech") == ["pub"]
    client.register_agent(make_agent("pub", tenant="acme", visibility=agent_pb2.VISIBILITY_PRIVATE))
    assert seen_by("initech") == []
