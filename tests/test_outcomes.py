"""Outcome-aware routing through the API, on SQLite and PostgreSQL: outcomes reported with ReportOutcome move
Discover's ranking for similar tasks (per tenant, per vector space), cold start changes nothing, bad input
changes nothing, an outcome reported on one server reaches another one's Discover through its token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from capreg.v1 import agent_pb2, discovery_pb2
from capreg_client import CapregClient, CapregError
from sqlalchemy import func, select

from registry.embedding.sentence import MINILM_NAME, SentenceTransformerEmbedder
from registry.store import tables as t
from tests import support
from tests.support import ServerThread, make_agent, make_capability, running_server

DIM = 384
ACME, GLOBEX = "acme", "globex"


def basis(*weights: float) -> list[float]:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(weights)] = weights
    return [float(x) for x in support.unit(vector)]


# The task is nearest to "alpha" by description, then "beta"; "gamma" is unrelated.
TASK = basis(1.0, 0.8)
NEAR_TASK = basis(1.0, 0.75, 0.05)  # a similar task, never reported itself
VECTORS = {"alpha": basis(1.0), "beta": basis(0.0, 1.0), "gamma": basis(0.0, 0.0, 1.0)}


def register_catalog(client: CapregClient, tenant: str = ACME) -> dict[str, str]:
    """Three public tools with their own vectors; name -> capability id."""
    ids = {}
    for name, vector in VECTORS.items():
        cap = make_capability(name, vector=agent_pb2.Vector(values=vector))
        agent = make_agent(f"{name}-tool", cap, tenant=tenant, visibility=agent_pb2.VISIBILITY_PUBLIC)
        ids[name] = client.register_agent(agent).agent.capabilities[0].id
    return ids


def ranking(answer: discovery_pb2.DiscoverResponse) -> list[str]:
    return [m.capability.name for m in answer.matches]


def discover(client: CapregClient, tenant: str = ACME, vector: list[float] = NEAR_TASK, **kw: object) -> list[str]:
    return ranking(client.discover(vector=vector, tenant=tenant, top_k=3, **kw))  # type: ignore[arg-type]


def terms(answer: discovery_pb2.DiscoverResponse) -> set[str]:
    return {term.name for m in answer.matches for term in m.score_terms}


def writes(server: ServerThread) -> tuple[int, int]:
    with server.app.engine.connect() as conn:
        seq = conn.execute(select(func.coalesce(func.max(t.change_log.c.seq), 0))).scalar_one()
        outcomes = conn.execute(select(func.count()).select_from(t.outcomes)).scalar_one()
    return int(seq), int(outcomes)


@pytest.fixture
def outcome_server(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    with running_server(tmp_path / "data", database_url, embedder, max_outcomes_per_capability=3) as s:
        yield s


@pytest.fixture
def client(outcome_server: ServerThread) -> Iterator[CapregClient]:
    with CapregClient(outcome_server.target, timeout=30) as c:
        yield c


def test_cold_start_ranks_by_description_only(client: CapregClient) -> None:
    register_catalog(client)
    answer = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=3)
    assert ranking(answer) == ["alpha", "beta", "gamma"]
    assert terms(answer) == {"similarity", "quality_prior"}
    for match in answer.matches:
        assert match.score == pytest.approx(0.9 * match.similarity + 0.1 * match.capability.quality_prior)
    assert answer.discover_id


def test_outcomes_for_similar_tasks_move_the_right_capability_to_the_top(client: CapregClient) -> None:
    ids = register_catalog(client)
    client.report_outcome(ids["alpha"], success=False, vector=TASK, tenant=ACME)
    client.report_outcome(ids["beta"], success=True, vector=TASK, tenant=ACME, latency_ms=120, cost_usd=0.002)
    answer = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=3)
    assert ranking(answer) == ["beta", "alpha", "gamma"]
    learned = {m.capability.name: t.value for m in answer.matches for t in m.score_terms if t.name == "learned_quality"}
    assert learned["beta"] > 0 > learned["alpha"]
    assert learned["gamma"] == 0.0


def test_failures_push_a_capability_down(client: CapregClient) -> None:
    ids = register_catalog(client)
    for _ in range(3):  # three failures and nothing else: its rate, shrunk toward 0.5, is 1/5
        client.report_outcome(ids["alpha"], score=0.0, vector=TASK, tenant=ACME)
    assert discover(client) == ["beta", "gamma", "alpha"]


def test_a_tenants_outcomes_never_change_another_tenants_ranking(client: CapregClient) -> None:
    ids = register_catalog(client)
    before = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=3)
    for _ in range(3):
        client.report_outcome(ids["gamma"], success=True, vector=TASK, tenant=GLOBEX)  # public: globex sees it
    assert discover(client, GLOBEX)[0] == "gamma"
    after = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=3)
    assert ranking(after) == ranking(before)
    assert [m.score for m in after.matches] == [m.score for m in before.matches]


def test_outcomes_inform_only_the_space_they_were_recorded_in(client: CapregClient) -> None:
    register_catalog(client)
    client.create_space("other", MINILM_NAME, "{name}: {description}")
    list(client.backfill_space("other"))
    text = "please beta this"
    before = client.discover(text, space="other", tenant=ACME, top_k=3)
    alpha = next(m.capability.id for m in before.matches if m.capability.name == "alpha")
    for _ in range(3):
        client.report_outcome(alpha, success=True, text=text, tenant=ACME)  # the serving space
    assert client.discover(text, tenant=ACME, top_k=3).matches[0].capability.name == "alpha"
    after = client.discover(text, space="other", tenant=ACME, top_k=3)
    assert ranking(after) == ranking(before)
    assert "learned_quality" not in terms(after)


def test_a_discover_id_names_the_task(client: CapregClient) -> None:
    ids = register_catalog(client)
    answer = client.discover(vector=TASK, tenant=ACME, top_k=3)
    assert answer.matches[0].capability.name == "alpha"
    client.report_outcome(answer.matches[0].capability.id, success=False, discover_id=answer.discover_id, tenant=ACME)
    client.report_outcome(ids["beta"], success=True, discover_id=answer.discover_id, tenant=ACME)
    assert discover(client)[0] == "beta"
    with pytest.raises(CapregError) as unknown:
        client.report_outcome(ids["beta"], success=True, discover_id="0" * 32, tenant=ACME)
    assert unknown.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "text" in unknown.value.message
    with pytest.raises(CapregError) as foreign:  # another tenant cannot name this tenant's task
        client.report_outcome(ids["beta"], success=True, discover_id=answer.discover_id, tenant=GLOBEX)
    assert foreign.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"score": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "score"),
        ({"score": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "score"),
        ({"success": True, "score": 1.0}, grpc.StatusCode.INVALID_ARGUMENT, "score"),
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "score"),
        ({"success": True, "latency_ms": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "latency_ms"),
        ({"success": True, "cost_usd": -0.01}, grpc.StatusCode.INVALID_ARGUMENT, "cost_usd"),
        ({"success": True, "input_tokens": 10**12}, grpc.StatusCode.INVALID_ARGUMENT, "input_tokens"),
        ({"success": True, "vector": [1.0, 2.0]}, grpc.StatusCode.INVALID_ARGUMENT, "vector.values"),
        ({"success": True, "capability_id": "no-such-capability"}, grpc.StatusCode.NOT_FOUND, None),
        ({"success": True, "capability_id": "private"}, grpc.StatusCode.NOT_FOUND, None),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    client: CapregClient, outcome_server: ServerThread, fields: dict[str, object], code: grpc.StatusCode, field: str
) -> None:
    fields = dict(fields)  # the parameters are shared by both backends
    ids = register_catalog(client)
    hidden = make_capability("hidden", vector=agent_pb2.Vector(values=VECTORS["beta"]))
    private = client.register_agent(make_agent("hidden", hidden, tenant=GLOBEX)).agent  # private to globex
    capability_id = str(fields.pop("capability_id", ids["beta"]))
    if capability_id == "private":
        capability_id = private.capabilities[0].id
    fields.setdefault("vector", TASK)
    before = writes(outcome_server)
    with pytest.raises(CapregError) as refused:
        client.report_outcome(capability_id, tenant=ACME, **fields)  # type: ignore[arg-type]
    assert refused.value.code == code
    if field is not None:
        assert refused.value.field == field
    assert writes(outcome_server) == before
    assert discover(client) == ["alpha", "beta", "gamma"]


def test_outcomes_are_bounded_per_capability(client: CapregClient, outcome_server: ServerThread) -> None:
    ids = register_catalog(client)
    for _ in range(5):
        client.report_outcome(ids["beta"], success=True, vector=TASK, tenant=ACME)
    with outcome_server.app.engine.connect() as conn:
        kept = conn.execute(
            select(func.count()).select_from(t.outcomes).where(t.outcomes.c.capability_id == ids["beta"])
        ).scalar_one()
    assert kept == 3
    space_id = outcome_server.app.spaces.serving.space.id
    assert outcome_server.app.outcome_index.count(space_id, ACME) == 3


def test_cost_preference_prefers_the_cheaper_capability(client: CapregClient) -> None:
    for name, price in (("alpha", 1.0), ("beta", 0.0)):
        cap = make_capability(
            name, vector=agent_pb2.Vector(values=VECTORS[name]), cost=agent_pb2.Cost(per_call_usd=price)
        )
        client.register_agent(make_agent(f"{name}-tool", cap, tenant=ACME))
    assert discover(client)[:2] == ["alpha", "beta"]
    answer = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=2, cost_preference=0.5)
    assert ranking(answer) == ["beta", "alpha"]
    assert "cost" in terms(answer)
    with pytest.raises(CapregError) as refused:
        client.discover(vector=NEAR_TASK, tenant=ACME, cost_preference=1.5)
    assert refused.value.field == "cost_preference"


def test_an_outcome_reported_on_one_server_reaches_discover_on_another(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    with (
        running_server(tmp_path / "a", pg_database, embedder, change_poll_s=30) as a,
        running_server(tmp_path / "b", pg_database, embedder, change_poll_s=30) as b,
        CapregClient(a.target, timeout=30) as on_a,
        CapregClient(b.target, timeout=30) as on_b,
    ):
        ids = register_catalog(on_a)
        token = on_a.report_outcome(ids["alpha"], success=False, vector=TASK, tenant=ACME).consistency_token
        token = on_a.report_outcome(ids["beta"], success=True, vector=TASK, tenant=ACME).consistency_token
        assert discover(on_b, min_seq=token)[0] == "beta"


def test_latency_preference_prefers_the_faster_capability(client: CapregClient) -> None:
    """Reported latency wins over the declared one; the two knobs together may not pass 1."""
    ids = register_catalog(client)  # every capability declares a p50 of 100 ms
    client.report_outcome(ids["alpha"], success=True, vector=TASK, tenant=ACME, latency_ms=2000)
    client.report_outcome(ids["beta"], success=True, vector=TASK, tenant=ACME, latency_ms=50)
    assert discover(client)[0] == "alpha"  # quality alone: alpha is the nearer description
    answer = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=3, latency_preference=0.6)
    assert ranking(answer)[0] == "beta"
    speed = {m.capability.name: t.value for m in answer.matches for t in m.score_terms if t.name == "latency"}
    assert speed == pytest.approx({"alpha": 0.0, "beta": 1 - 50 / 2000, "gamma": 1 - 100 / 2000})
    for match in answer.matches:
        assert match.score == pytest.approx(sum(t.weight * t.value for t in match.score_terms))
    with pytest.raises(CapregError) as refused:
        client.discover(vector=NEAR_TASK, tenant=ACME, cost_preference=0.6, latency_preference=0.6)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == "latency_preference"


def test_exploration_puts_the_least_tried_capability_first(client: CapregClient) -> None:
    ids = register_catalog(client)
    for name in ("alpha", "beta"):
        client.report_outcome(ids[name], success=True, vector=TASK, tenant=ACME)
    assert discover(client, exploration_rate=0.0) == ["alpha", "beta", "gamma"]
    answer = client.discover(vector=NEAR_TASK, tenant=ACME, top_k=3, exploration_rate=1.0)
    assert ranking(answer) == ["gamma", "alpha", "beta"]  # gamma has no outcome; the rest keep their order
    explored = [m.capability.name for m in answer.matches if any(t.name == "exploration" for t in m.score_terms)]
    assert explored == ["gamma"]
    # Exploration only reorders the answer: with top_k=2 gamma is not in it, and alpha and beta are tried alike.
    assert ranking(client.discover(vector=NEAR_TASK, tenant=ACME, top_k=2, exploration_rate=1.0)) == ["alpha", "beta"]
    with pytest.raises(CapregError) as refused:
        client.discover(vector=NEAR_TASK, tenant=ACME, exploration_rate=-0.1)
    assert refused.value.field == "exploration_rate"


def test_a_removed_capabilitys_outcomes_are_forgotten(client: CapregClient, outcome_server: ServerThread) -> None:
    ids = register_catalog(client)
    client.report_outcome(ids["alpha"], success=True, vector=TASK, tenant=ACME)
    client.report_outcome(ids["beta"], success=True, vector=TASK, tenant=ACME)
    space_id = outcome_server.app.spaces.serving.space.id
    assert outcome_server.app.outcome_index.count(space_id, ACME) == 2
    token = client.deregister_agent("beta-tool", tenant=ACME).consistency_token
    client.discover(vector=NEAR_TASK, tenant=ACME, min_seq=token)  # this server has applied the removal
    assert outcome_server.app.outcome_index.count(space_id, ACME) == 1
    assert writes(outcome_server)[1] == 1  # the database dropped it too
