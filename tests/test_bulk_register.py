"""RegisterAgents, the bulk path: one call, one transaction, shared model calls; all or nothing."""

from __future__ import annotations

import threading
import uuid

import grpc
import numpy as np
import pytest
from capreg.v1 import agent_pb2, registry_pb2
from capreg_client import CapregClient, CapregError, InvalidArgumentError

from tests.support import ServerThread, make_agent, make_capability, unit

TOPICS = [
    "astronomy",
    "baking",
    "chess",
    "dentistry",
    "elections",
    "falconry",
    "geology",
    "hydraulics",
    "insurance",
    "jazz",
    "knitting",
    "lasers",
    "mortgages",
    "nutrition",
    "origami",
    "pharmacy",
    "quarries",
    "robotics",
    "sailing",
    "taxes",
    "upholstery",
    "volcanoes",
    "welding",
    "xylophones",
    "yoga",
    "zoology",
    "archery",
    "beekeeping",
    "cartography",
    "diving",
    "embroidery",
    "fencing",
    "gardening",
    "hockey",
    "irrigation",
    "juggling",
    "kayaking",
    "lighthouses",
    "mining",
    "navigation",
]


def catalog(count: int, prefix: str = "bulk") -> list[agent_pb2.Agent]:
    """Agents with two capabilities each, all of distinct text."""
    return [
        make_agent(
            f"{prefix}-{i}",
            make_capability("summarize", description=f"summarizes articles about {TOPICS[i]}"),
            make_capability("translate", description=f"translates {TOPICS[i]} manuals from French to English"),
        )
        for i in range(count)
    ]


def names_of(client: CapregClient) -> set[str]:
    return {agent.name for agent in client.iter_agents(page_size=500)}


def test_a_batch_registers_every_agent_in_order_and_shares_model_calls(
    server: ServerThread, client: CapregClient
) -> None:
    batcher = server.app.spaces.serving.batcher
    calls_before, texts_before = batcher.batches, batcher.texts
    agents = catalog(40)
    salt = uuid.uuid4().hex[:8]  # texts no earlier test embedded (the embedder's cache outlives a server)
    for agent in agents:
        for cap in agent.capabilities:
            cap.description += f" (batch {salt})"
    answer = client.register_agents(agents)
    assert [r.agent.name for r in answer.results] == [a.name for a in agents]
    assert all(r.created and r.changed for r in answer.results)
    assert answer.consistency_token == max(r.consistency_token for r in answer.results)
    assert len({r.consistency_token for r in answer.results}) == 40  # one change-log row per agent
    assert batcher.texts - texts_before == 80
    assert batcher.batches - calls_before <= 4  # 80 texts in model-sized batches, not 80 calls
    for i in (0, 17, 39):
        found = client.discover(f"summarize an article about {TOPICS[i]}", top_k=1)
        assert found.matches[0].agent_name == f"bulk-{i}"
    # The same batch again changes nothing and embeds nothing.
    texts_before = batcher.texts
    again = client.register_agents(agents)
    assert not any(r.changed or r.created for r in again.results)
    assert batcher.texts == texts_before
    assert again.consistency_token >= answer.consistency_token


def test_a_batch_equals_registering_one_by_one(server: ServerThread, client: CapregClient) -> None:
    one_by_one = catalog(6, "single")
    batched = catalog(6, "batched")
    singles = [client.register_agent(agent).agent for agent in one_by_one]
    together = [r.agent for r in client.register_agents(batched).results]
    for single, bulk in zip(singles, together, strict=True):
        assert bulk.name.replace("batched", "single") == single.name
        assert [(c.name, c.version, c.description) for c in bulk.capabilities] == [
            (c.name, c.version, c.description) for c in single.capabilities
        ]
        assert (bulk.generation, bulk.status, bulk.visibility) == (single.generation, single.status, single.visibility)
    status = client.index_status()
    assert status.capabilities == 24


def test_one_bad_agent_refuses_the_whole_batch_naming_it(client: CapregClient) -> None:
    client.register_agent(make_agent("already-here"))
    before = names_of(client)
    agents = catalog(5)
    agents[3].name = "Not A Name"
    with pytest.raises(InvalidArgumentError) as err:
        client.register_agents(agents)
    assert err.value.field == "agents[3].agent.name"
    agents = catalog(5)
    del agents[2].capabilities[:]
    with pytest.raises(InvalidArgumentError) as err:
        client.register_agents(agents)
    assert err.value.field == "agents[2].agent.capabilities"
    agents = catalog(5)
    agents[4].capabilities[1].vector.values[:] = [1.0, 0.0]  # the serving space has 384 dimensions
    with pytest.raises(InvalidArgumentError) as err:
        client.register_agents(agents)
    assert err.value.field == "agents[4].agent.capabilities[1].vector.values"
    assert names_of(client) == before


def test_duplicates_empty_and_oversized_batches_are_refused(client: CapregClient) -> None:
    agents = catalog(3)
    agents.append(make_agent("bulk-1", make_capability("other")))
    with pytest.raises(InvalidArgumentError) as err:
        client.register_agents(agents)
    assert err.value.field == "agents[3].agent.name"
    assert "agents[1]" in str(err.value)
    with pytest.raises(InvalidArgumentError) as err:
        client.register_agents([])
    assert err.value.field == "agents"
    vector = agent_pb2.Vector(values=unit(np.ones(384, dtype=np.float32)).tolist())
    many = [make_agent(f"v-{i}", make_capability("x", vector=vector)) for i in range(1001)]
    with pytest.raises(InvalidArgumentError) as err:
        client.register_agents(many)
    assert err.value.field == "agents" and "1000" in str(err.value)
    assert names_of(client) == set()


def test_a_generation_conflict_aborts_the_batch_naming_the_agent(client: CapregClient) -> None:
    stored = client.register_agent(make_agent("versioned")).agent
    requests = [
        registry_pb2.RegisterAgentRequest(agent=make_agent("brand-new")),
        registry_pb2.RegisterAgentRequest(
            agent=make_agent("versioned", description="changed"), expected_generation=stored.generation + 5
        ),
    ]
    with pytest.raises(CapregError) as err:
        client.register_agents(requests)
    assert err.value.code == grpc.StatusCode.ABORTED
    assert "agents[1]" in str(err.value)
    assert names_of(client) == {"versioned"}
    with pytest.raises(CapregError) as err:  # a batch of one names its agent the same way
        client.register_agents(requests[1:])
    assert err.value.code == grpc.StatusCode.ABORTED and "agents[0]" in str(err.value)
    requests[1].expected_generation = stored.generation
    answer = client.register_agents(requests)
    assert [r.agent.generation for r in answer.results] == [1, stored.generation + 1]


def test_concurrent_overlapping_batches_neither_deadlock_nor_lose_a_write(client: CapregClient) -> None:
    """Two callers send the same 20 agents in opposite orders, five times each: rows are locked in name
    order, so neither waits on the other forever, and every call is answered."""
    agents = catalog(20, "shared")
    errors: list[BaseException] = []

    def send(batch: list[agent_pb2.Agent], round_tag: str) -> None:
        try:
            for n in range(5):
                for agent in batch:
                    agent.description = f"{round_tag} round {n}"
                client.register_agents(batch, timeout=60)
        except BaseException as exc:  # reported below
            errors.append(exc)

    forward = [agent_pb2.Agent().FromString(a.SerializeToString()) for a in agents]
    backward = [agent_pb2.Agent().FromString(a.SerializeToString()) for a in reversed(agents)]
    threads = [threading.Thread(target=send, args=(b, tag)) for b, tag in ((forward, "f"), (backward, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    descriptions = {a.description for a in client.iter_agents(page_size=100)}
    assert descriptions <= {"f round 4", "b round 4"} and len(descriptions) == 1  # one batch won, whole
