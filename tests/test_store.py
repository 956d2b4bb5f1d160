"""The store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import Engine

from registry.domain.errors import Conflict, InvalidArgument, NotFound
from registry.domain.models import (
    Agent,
    AgentKind,
    AgentRef,
    AgentStatus,
    Capability,
    ListAgentsQuery,
    VectorSpace,
    WriteResult,
)
from registry.embedding.template import text_hash
from registry.store.repository import RegistryStore, vector_to_bytes
from tests.support import empty_tables

DIM = 8
SPACE = VectorSpace(name="test-space", model="m", model_revision="r", weights_sha256="0" * 64, template="t", dim=DIM)


def vector_for(text: str) -> bytes:
    rng = np.random.default_rng(int(text_hash(text)[:8], 16))
    return vector_to_bytes(rng.standard_normal(DIM).astype(np.float32))


def register(store: RegistryStore, agent: Agent, space_id: int, expected_generation: int = 0) -> WriteResult:
    """Registers with vectors derived from each capability's description, as the service would."""
    hashes = [text_hash(c.description) for c in agent.capabilities]
    vectors = {h: vector_for(c.description) for h, c in zip(hashes, agent.capabilities, strict=True)}
    return store.register(agent, expected_generation, space_id, hashes, vectors)


def agent(name: str = "a1", tenant: str = "default", *caps: Capability, **fields: object) -> Agent:
    capabilities = caps or (Capability(name="summarize", version="1.0.0", description="Summarizes."),)
    return Agent(tenant=tenant, name=name, kind=AgentKind.TOOL, capabilities=capabilities, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(engine: Engine) -> RegistryStore:
    return RegistryStore(engine)


@pytest.fixture
def space_id(store: RegistryStore) -> int:
    return store.ensure_space(SPACE).id


def test_ensure_space_is_idempotent_and_refuses_a_different_model(store: RegistryStore, space_id: int) -> None:
    assert store.ensure_space(SPACE).id == space_id
    with pytest.raises(Conflict, match="dim"):
        store.ensure_space(replace(SPACE, dim=16))


def test_register_creates_then_is_idempotent(store: RegistryStore, space_id: int) -> None:
    first = register(store, agent(labels={"team": "x"}), space_id)
    assert first.created and first.seq > 0 and first.agent is not None
    assert first.agent.generation == 1 and first.agent.status == AgentStatus.ACTIVE
    assert first.agent.created_at is not None and first.agent.created_at.tzinfo is not None
    (entry,) = first.change.upserts
    assert entry.vector is not None and entry.tenant == "default" and entry.labels == {"team": "x"}

    again = register(store, agent(labels={"team": "x"}), space_id)
    assert not again.changed and again.change.upserts == () and again.agent == first.agent
    assert store.watermark() == first.seq


def test_changing_one_capability_sends_only_its_vector(store: RegistryStore, space_id: int) -> None:
    a = Capability(name="a", version="1.0.0", description="Alpha.")
    b = Capability(name="b", version="1.0.0", description="Beta.")
    register(store, agent("x", "default", a, b), space_id)
    result = register(store, agent("x", "default", a, replace(b, description="Beta, improved.")), space_id)
    vectors = {e.capability.name: e.vector is not None for e in result.change.upserts}
    assert vectors == {"a": False, "b": True}
    assert result.agent is not None and result.agent.generation == 2

    tags_only = register(
        store, agent("x", "default", a, replace(b, description="Beta, improved.", tags=("t",))), space_id
    )
    assert tags_only.changed and all(e.vector is None for e in tags_only.change.upserts)


def test_removed_capabilities_are_deleted_with_their_vectors(store: RegistryStore, space_id: int) -> None:
    v1 = Capability(name="c", version="1.0.0", description="One.")
    v2 = Capability(name="c", version="2.0.0", description="Two.")
    first = register(store, agent("x", "default", v1, v2), space_id)
    assert first.agent is not None
    old_id = next(c.id for c in first.agent.capabilities if c.version == "1.0.0")
    result = register(store, agent("x", "default", v2), space_id)
    assert result.change.removed == (old_id,)
    assert {e.capability.version for e in store.catalog(space_id)} == {"2.0.0"}


def test_vectors_are_found_by_text_hash(store: RegistryStore, space_id: int) -> None:
    register(store, agent(), space_id)
    found = store.vectors_by_text(space_id, {text_hash("Summarizes."), "missing"})
    assert found == {text_hash("Summarizes."): vector_for("Summarizes.")}


def test_generation_conflicts(store: RegistryStore, space_id: int) -> None:
    with pytest.raises(Conflict):
        register(store, agent(), space_id, expected_generation=3)
    register(store, agent(), space_id)
    with pytest.raises(Conflict, match="generation 1, not 5"):
        register(store, agent(description="new"), space_id, expected_generation=5)
    assert register(store, agent(description="new"), space_id, expected_generation=1).seq > 0
    with pytest.raises(Conflict):
        store.update_status(AgentRef(tenant="default", name="a1"), AgentStatus.DRAINING, 1)
    with pytest.raises(Conflict):
        store.deregister(AgentRef(tenant="default", name="a1"), 1)


def test_status_and_deregister(store: RegistryStore, space_id: int) -> None:
    created = register(store, agent(), space_id)
    assert created.agent is not None
    ref = AgentRef(id=created.agent.id)
    drained = store.update_status(ref, AgentStatus.DRAINING, 0)
    assert drained.seq > created.seq
    assert [e.status for e in drained.change.upserts] == [AgentStatus.DRAINING]
    assert all(e.vector is None for e in drained.change.upserts)
    assert not store.update_status(ref, AgentStatus.DRAINING, 0).changed
    gone = store.deregister(ref, 0)
    assert gone.change.removed == tuple(c.id for c in created.agent.capabilities)
    with pytest.raises(NotFound):
        store.get(ref)
    assert list(store.catalog(space_id)) == []


def test_tenants_are_separate(store: RegistryStore, space_id: int) -> None:
    register(store, agent("same", "acme"), space_id)
    register(store, agent("same", "globex"), space_id)
    acme, _ = store.list_agents(ListAgentsQuery(tenant="acme"))
    assert [(a.tenant, a.name) for a in acme] == [("acme", "same")]
    assert store.get(AgentRef(tenant="globex", name="same")).tenant == "globex"


def test_list_pages_and_rejects_foreign_tokens(store: RegistryStore, space_id: int) -> None:
    for i in range(5):
        register(store, agent(f"n{i}", labels={"odd": str(i % 2)}), space_id)
    page, token = store.list_agents(ListAgentsQuery(page_size=2))
    assert [a.name for a in page] == ["n0", "n1"] and token
    page, token = store.list_agents(ListAgentsQuery(page_size=2, page_token=token))
    assert [a.name for a in page] == ["n2", "n3"]
    page, last = store.list_agents(ListAgentsQuery(page_size=2, page_token=token))
    assert [a.name for a in page] == ["n4"] and last == ""
    odd, _ = store.list_agents(ListAgentsQuery(labels={"odd": "1"}))
    assert [a.name for a in odd] == ["n1", "n3"]
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_agents(ListAgentsQuery(page_size=2, page_token=token, name_prefix="n"))
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_agents(ListAgentsQuery(page_token="garbage!"))


def test_name_prefix_is_literal(store: RegistryStore, space_id: int) -> None:
    register(store, agent("a_b"), space_id)
    register(store, agent("axb"), space_id)
    found, _ = store.list_agents(ListAgentsQuery(name_prefix="a_"))
    assert [a.name for a in found] == ["a_b"]


# -- the store against a model ------------------------------------------------------------------------

NAMES = st.sampled_from(["alpha", "beta", "gamma"])
TENANTS = st.sampled_from(["default", "acme"])
CAPS = st.lists(
    st.builds(
        Capability,
        name=st.sampled_from(["x", "y"]),
        version=st.sampled_from(["1.0.0", "2.0.0"]),
        description=st.sampled_from(["One.", "Two.", "Three."]),
        tags=st.lists(st.sampled_from(["t1", "t2"]), max_size=2, unique=True).map(tuple),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda c: (c.name, c.version),
)


def test_store_matches_a_model(engine: Engine) -> None:
    """Random registrations, status changes and removals leave the store equal to a dict model."""

    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            empty_tables(engine)
            self.store = RegistryStore(engine)
            self.space_id = self.store.ensure_space(SPACE).id
            self.model: dict[tuple[str, str], tuple[AgentStatus, dict[tuple[str, str], Capability]]] = {}
            self.seq = 0

        @rule(tenant=TENANTS, name=NAMES, caps=CAPS)
        def register(self, tenant: str, name: str, caps: list[Capability]) -> None:
            result = register(self.store, agent(name, tenant, *caps), self.space_id)
            status = self.model.get((tenant, name), (AgentStatus.ACTIVE, {}))[0]
            self.model[(tenant, name)] = (status, {c.key: c for c in caps})
            if result.changed:
                assert result.seq > self.seq
                self.seq = result.seq

        @rule(tenant=TENANTS, name=NAMES, status=st.sampled_from(list(AgentStatus)))
        def set_status(self, tenant: str, name: str, status: AgentStatus) -> None:
            ref = AgentRef(tenant=tenant, name=name)
            if (tenant, name) not in self.model:
                with pytest.raises(NotFound):
                    self.store.update_status(ref, status, 0)
                return
            self.store.update_status(ref, status, 0)
            self.model[(tenant, name)] = (status, self.model[(tenant, name)][1])

        @rule(tenant=TENANTS, name=NAMES)
        def deregister(self, tenant: str, name: str) -> None:
            ref = AgentRef(tenant=tenant, name=name)
            if (tenant, name) not in self.model:
                with pytest.raises(NotFound):
                    self.store.deregister(ref, 0)
                return
            self.store.deregister(ref, 0)
            del self.model[(tenant, name)]

        @invariant()
        def agrees_with_model(self) -> None:
            stored = {}
            for tenant in ("default", "acme"):
                agents, _ = self.store.list_agents(ListAgentsQuery(tenant=tenant, page_size=500))
                for a in agents:
                    stored[(a.tenant, a.name)] = (a.status, {c.key: c.content() for c in a.capabilities})
            expected = {
                key: (status, {k: c.content() for k, c in caps.items()}) for key, (status, caps) in self.model.items()
            }
            assert stored == expected
            catalog = {(e.tenant, e.agent_name, e.capability.key, e.status) for e in self.store.catalog(self.space_id)}
            assert catalog == {
                (key[0], key[1], cap_key, status) for key, (status, caps) in self.model.items() for cap_key in caps
            }

    StoreMachine.TestCase.settings = settings(
        max_examples=15, stateful_step_count=12, deadline=None, suppress_health_check=list(HealthCheck)
    )
    StoreMachine.TestCase().runTest()
