"""Malformed input on every RPC gets INVALID_ARGUMENT naming the field, and writes nothing.

Table-driven cases run against one real server per backend (SQLite and PostgreSQL), shared by the module so
that a hundred-odd cases cost one server start each; every case compares a dump of every table and of the
serving index before and after. Hypothesis fuzzes every RPC, and the raw wire, through the conftest servers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from unicodedata import category

import grpc
import numpy as np
import pytest
from _pytest.mark.structures import ParameterSet
from capreg.v1 import agent_pb2, discovery_pb2, discovery_pb2_grpc, registry_pb2, registry_pb2_grpc
from capreg_client import CapregClient, CapregError, InvalidArgumentError, NotFoundError
from capreg_client.errors import from_rpc_error
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.store.tables import metadata
from tests import support
from tests.support import make_agent, make_capability

T = TypeVar("T")
BACKENDS = ["sqlite", "postgres"]
SEED = "seed"
DIM = 384
NAN, INF = math.nan, math.inf
UNIT = [1.0] + [0.0] * (DIM - 1)
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FUZZ_EXAMPLES = int(os.environ.get("CAPREG_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

# -- helpers -----------------------------------------------------------------------------------------

Snapshot = tuple[object, ...]


def snapshot(server: support.ServerThread) -> Snapshot:
    """Every row of every table, and the serving index's bookkeeping: what any write would change."""
    with server.app.engine.connect() as conn:
        tables = tuple(
            tuple(tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns)))
            for table in metadata.sorted_tables
        )
    index = server.app.serving.index
    return tables, index.watermark, index.live_count, index.size, tuple(sorted(index.row_of.items()))


def invoke(method: Callable[..., T], message: Message | bytes) -> T:
    """Call a raw stub method; a failure comes back as the client's CapregError, with its field."""
    try:
        return method(message, timeout=30)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, CapregError | None]:
    try:
        call()
    except CapregError as error:
        return error.code, error
    return OK, None


def assert_invalid(method: Callable[..., object], message: Message, field: str) -> None:
    """The call fails with INVALID_ARGUMENT, and its BadRequest detail names exactly `field`."""
    with pytest.raises(CapregError) as caught:
        invoke(method, message)
    error = caught.value
    assert (error.code, error.field) == (INVALID, field), error.message
    assert isinstance(error, InvalidArgumentError)
    assert field in error.message


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def label_field(prefix: str, key: str) -> str:
    return f"{prefix}[{key!r}]"


# -- the shared server -------------------------------------------------------------------------------


@dataclass
class Rig:
    backend: str
    server: support.ServerThread
    client: CapregClient
    registry: registry_pb2_grpc.RegistryServiceStub
    discovery: discovery_pb2_grpc.DiscoveryServiceStub


def seed_agent() -> agent_pb2.Agent:
    return make_agent(
        SEED,
        make_capability("summarize"),
        make_capability("translate", description="Translates text between languages."),
        labels={"team": "red"},
    )


def good_agent() -> agent_pb2.Agent:
    """The seed agent with a change, so that a wrongly accepted request would write something."""
    agent = seed_agent()
    agent.description = "Registered again, with one fault."
    return agent


@pytest.fixture(scope="module", params=BACKENDS)
def rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[Rig]:
    """One server per backend for the table-driven cases, on a database of its own."""
    data = tmp_path_factory.mktemp(f"malformed-{request.param}")
    pg_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{data / 'capreg.db'}"
    else:
        try:
            pg_name = support.create_pg_database()
        except Exception as exc:  # any connection problem
            pytest.fail(f"PostgreSQL at {support.PG_ADMIN_URL} is unreachable ({exc})", pytrace=False)
        url = support.pg_url(pg_name)
    support.migrated_engine(url).dispose()
    try:
        with support.running_server(Path(data) / "data", url, embedder) as server:
            channel = grpc.insecure_channel(server.target)
            with CapregClient(server.target, timeout=30, channel=channel) as client:
                client.register_agent(seed_agent())
                client.register_agent(make_agent("seed-2", make_capability(vector=agent_pb2.Vector(values=UNIT))))
                client.register_agent(make_agent(SEED, tenant="acme"))
                yield Rig(
                    request.param,
                    server,
                    client,
                    registry_pb2_grpc.RegistryServiceStub(channel),
                    discovery_pb2_grpc.DiscoveryServiceStub(channel),
                )
    finally:
        if pg_name is not None:
            support.drop_pg_database(pg_name)


def seed_state(rig: Rig) -> agent_pb2.Agent | None:
    """The seed agent as stored now (compared before and after each case, so one failure does not cascade)."""
    try:
        return rig.client.get_agent(SEED)
    except NotFoundError:
        return None


# -- RegisterAgent -----------------------------------------------------------------------------------


def register(agent: agent_pb2.Agent, expected_generation: int = 0) -> registry_pb2.RegisterAgentRequest:
    return registry_pb2.RegisterAgentRequest(agent=agent, expected_generation=expected_generation)


def bad_agent(case_id: str, field: str, **fields: Any) -> ParameterSet:
    """The good agent with agent-level fields replaced."""
    agent = good_agent()
    for key, value in fields.items():
        if key == "labels":
            agent.labels.clear()
            agent.labels.update(value)
        else:
            setattr(agent, key, value)
    return pytest.param(register(agent), field, id=case_id)


def bad_cap(case_id: str, field: str, index: int = 0, **fields: Any) -> ParameterSet:
    """The good agent with capability `index` rebuilt with some fields replaced."""
    agent = good_agent()
    original = agent.capabilities[index]
    fields.setdefault("name", original.name)
    fields.setdefault("version", original.version)
    fields.setdefault("description", original.description)
    agent.capabilities[index].CopyFrom(make_capability(**fields))
    return pytest.param(register(agent), f"agent.capabilities[{index}].{field}", id=case_id)


def bad_vector(case_id: str, values: list[float]) -> ParameterSet:
    return bad_cap(case_id, "vector.values", vector=agent_pb2.Vector(values=values))


def _capability_list(case_id: str, field: str, capabilities: list[agent_pb2.Capability]) -> ParameterSet:
    agent = good_agent()
    del agent.capabilities[:]
    agent.capabilities.extend(capabilities)
    return pytest.param(register(agent), field, id=case_id)


REGISTER_CASES = [
    # names
    bad_agent("name-empty", "agent.name", name=""),
    bad_agent("name-129-chars", "agent.name", name="a" * 129),
    bad_agent("name-space", "agent.name", name="bad name"),
    bad_agent("name-leading-dash", "agent.name", name="-agent"),
    bad_agent("name-non-ascii", "agent.name", name="agént"),
    bad_agent("name-emoji", "agent.name", name="agent😀"),
    bad_agent("name-trailing-newline", "agent.name", name="agent\n"),
    bad_agent("name-128-and-newline", "agent.name", name="a" * 128 + "\n"),
    bad_agent("name-nul", "agent.name", name="ag\x00ent"),
    bad_agent("name-rtl-override", "agent.name", name="agent\u202e"),
    # tenant
    bad_agent("tenant-uppercase", "agent.tenant", tenant="Acme"),
    bad_agent("tenant-underscore", "agent.tenant", tenant="acme_corp"),
    bad_agent("tenant-trailing-dash", "agent.tenant", tenant="acme-"),
    bad_agent("tenant-64-chars", "agent.tenant", tenant="a" * 64),
    bad_agent("tenant-trailing-newline", "agent.tenant", tenant="acme\n"),
    bad_agent("tenant-space", "agent.tenant", tenant=" "),
    # enums, set by raw number
    bad_agent("kind-99", "agent.kind", kind=99),
    bad_agent("kind-unspecified", "agent.kind", kind=agent_pb2.AGENT_KIND_UNSPECIFIED),
    bad_agent("kind-negative", "agent.kind", kind=-1),
    bad_agent("status-99", "agent.status", status=99),
    bad_agent("status-negative", "agent.status", status=-7),
    # agent texts
    bad_agent("endpoint-2049-chars", "agent.endpoint", endpoint="https://" + "e" * 2041),
    bad_agent("endpoint-nul", "agent.endpoint", endpoint="https://a\x00b"),
    bad_agent("agent-description-4001-chars", "agent.description", description="d" * 4001),
    bad_agent("agent-description-nul", "agent.description", description="a\x00"),
    # labels
    bad_agent("labels-65", "agent.labels", labels={f"k{i}": "v" for i in range(65)}),
    bad_agent("label-key-space", label_field("agent.labels", "bad key"), labels={"bad key": "v"}),
    bad_agent("label-key-empty", label_field("agent.labels", ""), labels={"": "v"}),
    bad_agent("label-key-64-chars", label_field("agent.labels", "k" * 64), labels={"k" * 64: "v"}),
    bad_agent("label-key-newline", label_field("agent.labels", "team\n"), labels={"team\n": "v"}),
    bad_agent("label-key-trailing-dot", label_field("agent.labels", "team."), labels={"team.": "v"}),
    bad_agent("label-value-257-chars", label_field("agent.labels", "k"), labels={"k": "v" * 257}),
    bad_agent("label-value-nul", label_field("agent.labels", "k"), labels={"k": "\x00"}),
    # the list of capabilities
    _capability_list("capabilities-none", "agent.capabilities", []),
    _capability_list(
        "capabilities-65",
        "agent.capabilities",
        [make_capability("summarize", f"1.0.{i}") for i in range(65)],
    ),
    _capability_list(
        "capabilities-duplicate",
        "agent.capabilities[1]",
        [make_capability("summarize", "1.0.0"), make_capability("summarize", "1.0.0", description="Again.")],
    ),
    _capability_list(
        "capabilities-duplicate-later",
        "agent.capabilities[2]",
        [make_capability("a"), make_capability("b"), make_capability("a", description="Again.")],
    ),
    # capability names and versions
    bad_cap("cap-name-empty", "name", name=""),
    bad_cap("cap-name-space", "name", name="sum marize"),
    bad_cap("cap-name-129-chars", "name", name="c" * 129),
    bad_cap("cap-name-newline", "name", name="summarize\n"),
    bad_cap("version-two-parts", "version", version="1.0"),
    bad_cap("version-v-prefix", "version", version="v1.0.0"),
    bad_cap("version-leading-zero", "version", version="01.0.0"),
    bad_cap("version-empty", "version", version=""),
    bad_cap("version-four-parts", "version", version="1.0.0.0"),
    bad_cap("version-empty-prerelease", "version", version="1.0.0-"),
    bad_cap("version-word", "version", version="latest"),
    bad_cap("version-trailing-newline", "version", version="1.0.0\n"),
    bad_cap("version-arabic-digit", "version", version="1\u0661.0.0"),
    bad_cap("version-129-chars", "version", version="1.0.0-" + "a" * 123),
    bad_cap("version-of-second-capability", "version", index=1, version="1.0"),
    # capability texts
    bad_cap("description-empty", "description", description=""),
    bad_cap("description-whitespace", "description", description=" \n\t "),
    bad_cap("description-4001-chars", "description", description="d" * 4001),
    bad_cap("description-nul", "description", description="Does\x00things."),
    bad_cap("examples-21", "examples", examples=[f"example {i}" for i in range(21)]),
    bad_cap("example-empty", "examples[0]", examples=[""]),
    bad_cap("example-whitespace", "examples[1]", examples=["fine", "   "]),
    bad_cap("example-501-chars", "examples[0]", examples=["e" * 501]),
    bad_cap("tags-33", "tags", tags=[f"t{i}" for i in range(33)]),
    bad_cap("tag-empty", "tags[0]", tags=[""]),
    bad_cap("tag-leading-space", "tags[1]", tags=["nlp", " nlp"]),
    bad_cap("tag-65-chars", "tags[0]", tags=["t" * 65]),
    bad_cap("tag-tab", "tags[0]", tags=["a\tb"]),
    bad_cap("tag-trailing-newline", "tags[0]", tags=["nlp\n"]),
    bad_cap("input-mode-256-chars", "input_modes[0]", input_modes=["m" * 256]),
    bad_cap("output-mode-empty", "output_modes[0]", output_modes=[""]),
    bad_cap("region-control-char", "regions[0]", regions=["eu\x7fwest"]),
    bad_cap("region-c1-control-char", "regions[0]", regions=["eu\x85west"]),
    # numbers
    bad_cap("cost-nan", "cost.per_call_usd", cost=agent_pb2.Cost(per_call_usd=NAN)),
    bad_cap("cost-minus-inf", "cost.per_call_usd", cost=agent_pb2.Cost(per_call_usd=-INF)),
    bad_cap("cost-over-max", "cost.per_call_usd", cost=agent_pb2.Cost(per_call_usd=1_000_001.0)),
    bad_cap("cost-input-inf", "cost.per_1k_input_tokens_usd", cost=agent_pb2.Cost(per_1k_input_tokens_usd=INF)),
    bad_cap(
        "cost-output-negative", "cost.per_1k_output_tokens_usd", cost=agent_pb2.Cost(per_1k_output_tokens_usd=-0.01)
    ),
    bad_cap("latency-nan", "latency_p50_ms", latency_p50_ms=NAN),
    bad_cap("latency-negative", "latency_p50_ms", latency_p50_ms=-1.0),
    bad_cap("latency-inf", "latency_p50_ms", latency_p50_ms=INF),
    bad_cap("latency-over-a-day", "latency_p50_ms", latency_p50_ms=86_400_001.0),
    bad_cap("quality-negative", "quality_prior", quality_prior=-0.1),
    bad_cap("quality-over-one", "quality_prior", quality_prior=1.1),
    bad_cap("quality-nan", "quality_prior", quality_prior=NAN),
    bad_cap("quality-inf", "quality_prior", quality_prior=INF),
    # own vectors
    bad_vector("vector-383", UNIT[:-1]),
    bad_vector("vector-385", [*UNIT, 0.0]),
    bad_vector("vector-empty", []),
    bad_vector("vector-nan", [NAN, *UNIT[1:]]),
    bad_vector("vector-inf", [*UNIT[:-1], INF]),
    bad_vector("vector-minus-inf", [-INF] * DIM),
    bad_vector("vector-zero", [0.0] * DIM),
    bad_vector("vector-norm-overflows", [1e19] * DIM),
    bad_vector("vector-norm-underflows", [1e-30] * DIM),
    bad_cap("vector-space-bad-name", "vector.space", vector=agent_pb2.Vector(values=UNIT, space="bad space")),
    # the request around the agent
    pytest.param(register(good_agent(), expected_generation=-1), "expected_generation", id="generation-negative"),
]


@pytest.mark.parametrize(("message", "field"), REGISTER_CASES)
def test_register_agent_rejects(rig: Rig, message: registry_pb2.RegisterAgentRequest, field: str) -> None:
    before, seed = snapshot(rig.server), seed_state(rig)
    assert_invalid(rig.registry.RegisterAgent, message, field)
    assert snapshot(rig.server) == before
    assert seed_state(rig) == seed  # the existing agent the request named: same generation, same everything


# -- GetAgent ----------------------------------------------------------------------------------------

# (case id, a bad reference to an agent, the field named); shared by GetAgent, UpdateAgentStatus, DeregisterAgent
BAD_REFS: list[tuple[str, agent_pb2.AgentRef | None, str]] = [
    ("ref-missing", None, "agent"),
    ("ref-empty", agent_pb2.AgentRef(), "agent"),
    ("ref-tenant-only", agent_pb2.AgentRef(tenant="acme"), "agent"),
    ("name-space", agent_pb2.AgentRef(name="bad name"), "agent.name"),
    ("name-129-chars", agent_pb2.AgentRef(name="s" * 129), "agent.name"),
    ("name-trailing-newline", agent_pb2.AgentRef(name=SEED + "\n"), "agent.name"),
    ("tenant-uppercase", agent_pb2.AgentRef(tenant="Acme", name=SEED), "agent.tenant"),
    ("tenant-trailing-newline", agent_pb2.AgentRef(tenant="default\n", name=SEED), "agent.tenant"),
    ("id-65-chars", agent_pb2.AgentRef(id="x" * 65), "agent.id"),
    ("id-nul", agent_pb2.AgentRef(id="\x00", name=SEED), "agent.id"),
]


@pytest.mark.parametrize(("ref", "field"), [pytest.param(ref, field, id=i) for i, ref, field in BAD_REFS])
def test_get_agent_rejects(rig: Rig, ref: agent_pb2.AgentRef | None, field: str) -> None:
    before = snapshot(rig.server)
    assert_invalid(rig.registry.GetAgent, registry_pb2.GetAgentRequest(agent=ref), field)
    assert snapshot(rig.server) == before


# -- ListAgents --------------------------------------------------------------------------------------


def listing(case_id: str, field: str, **fields: Any) -> ParameterSet:
    return pytest.param(registry_pb2.ListAgentsRequest(**fields), field, id=case_id)


LIST_CASES = [
    listing("page-size-501", "page_size", page_size=501),
    listing("page-size-negative", "page_size", page_size=-1),
    listing("page-size-int32-min", "page_size", page_size=-(2**31)),
    listing("tenant-uppercase", "tenant", tenant="Acme"),
    listing("tenant-64-chars", "tenant", tenant="t" * 64),
    listing("kind-99", "kinds[0]", kinds=[99]),
    listing("kind-unspecified", "kinds[1]", kinds=[agent_pb2.AGENT_KIND_TOOL, agent_pb2.AGENT_KIND_UNSPECIFIED]),
    listing("status-99", "status", status=99),
    listing("status-negative", "status", status=-1),
    listing("labels-65", "labels", labels={f"k{i}": "v" for i in range(65)}),
    listing("label-key-space", label_field("labels", "bad key"), labels={"bad key": "v"}),
    listing("label-value-257-chars", label_field("labels", "k"), labels={"k": "v" * 257}),
    listing("name-prefix-129-chars", "name_prefix", name_prefix="n" * 129),
    listing("name-prefix-nul", "name_prefix", name_prefix="se\x00"),
    listing("token-not-base64", "page_token", page_token="not-a-token"),
    listing("token-not-json", "page_token", page_token=base64.urlsafe_b64encode(b"hello").decode()),
    listing("token-json-list", "page_token", page_token=b64([1, 2])),
    listing("token-json-string", "page_token", page_token=b64("seed")),
    listing("token-missing-keys", "page_token", page_token=b64({"a": "seed"})),
    listing("token-after-not-string", "page_token", page_token=b64({"a": 7, "f": "0" * 16})),
    listing("token-wrong-fingerprint", "page_token", page_token=b64({"a": SEED, "f": "0" * 16})),
    listing("token-1025-chars", "page_token", page_token="A" * 1025),
    listing("token-nul", "page_token", page_token="\x00"),
    listing("token-non-ascii", "page_token", page_token="tökén"),
]


@pytest.mark.parametrize(("message", "field"), LIST_CASES)
def test_list_agents_rejects(rig: Rig, message: registry_pb2.ListAgentsRequest, field: str) -> None:
    before = snapshot(rig.server)
    assert_invalid(rig.registry.ListAgents, message, field)
    assert snapshot(rig.server) == before


def test_list_agents_rejects_a_token_issued_for_other_filters(rig: Rig) -> None:
    token = rig.client.list_agents(page_size=1).next_page_token
    assert token
    assert rig.client.list_agents(page_size=1, page_token=token).agents
    for other in ({"tenant": "acme"}, {"name_prefix": "seed"}, {"kinds": [agent_pb2.AGENT_KIND_TOOL]}):
        message = registry_pb2.ListAgentsRequest(page_size=1, page_token=token, **other)
        assert_invalid(rig.registry.ListAgents, message, "page_token")


def test_a_forged_page_token_is_never_an_internal_error(rig: Rig) -> None:
    """A token with the right fingerprint but a NUL in its cursor: PostgreSQL refuses NUL in text."""
    fingerprint = hashlib.sha256(json.dumps(["default", [], None, [], ""]).encode()).hexdigest()[:16]
    assert rig.client.list_agents(page_size=1, page_token=b64({"a": "seed", "f": fingerprint})).agents
    code, error = code_of(lambda: rig.client.list_agents(page_token=b64({"a": "se\x00ed", "f": fingerprint})))
    assert code == INVALID and error is not None and error.field == "page_token"


# -- UpdateAgentStatus -------------------------------------------------------------------------------

SEED_REF = agent_pb2.AgentRef(name=SEED)
DRAINING = agent_pb2.AGENT_STATUS_DRAINING


def update(case_id: str, field: str, ref: agent_pb2.AgentRef | None = SEED_REF, **fields: Any) -> ParameterSet:
    fields.setdefault("status", DRAINING)
    return pytest.param(registry_pb2.UpdateAgentStatusRequest(agent=ref, **fields), field, id=case_id)


UPDATE_CASES = [
    update("status-unspecified", "status", status=agent_pb2.AGENT_STATUS_UNSPECIFIED),
    update("status-99", "status", status=99),
    update("status-negative", "status", status=-1),
    update("status-99-and-no-ref", "status", ref=None, status=99),  # the status is checked first
    *(update(case_id, field, ref=ref) for case_id, ref, field in BAD_REFS),
    update("generation-negative", "expected_generation", expected_generation=-1),
]


@pytest.mark.parametrize(("message", "field"), UPDATE_CASES)
def test_update_agent_status_rejects(rig: Rig, message: registry_pb2.UpdateAgentStatusRequest, field: str) -> None:
    before, seed = snapshot(rig.server), seed_state(rig)
    assert_invalid(rig.registry.UpdateAgentStatus, message, field)
    assert snapshot(rig.server) == before
    assert seed_state(rig) == seed  # the existing agent the request named: same generation, same everything


# -- DeregisterAgent ---------------------------------------------------------------------------------

DEREGISTER_CASES = [
    *(pytest.param(registry_pb2.DeregisterAgentRequest(agent=ref), field, id=i) for i, ref, field in BAD_REFS),
    pytest.param(
        registry_pb2.DeregisterAgentRequest(agent=SEED_REF, expected_generation=-1),
        "expected_generation",
        id="generation-negative",
    ),
]


@pytest.mark.parametrize(("message", "field"), DEREGISTER_CASES)
def test_deregister_agent_rejects(rig: Rig, message: registry_pb2.DeregisterAgentRequest, field: str) -> None:
    before, seed = snapshot(rig.server), seed_state(rig)
    assert_invalid(rig.registry.DeregisterAgent, message, field)
    assert snapshot(rig.server) == before
    assert seed_state(rig) == seed  # the existing agent the request named: same generation, same everything


# -- Discover ----------------------------------------------------------------------------------------


def discover(
    case_id: str,
    field: str,
    text: str | None = "summarize this",
    vector: list[float] | None = None,
    space: str = "",
    **fields: Any,
) -> ParameterSet:
    message = discovery_pb2.DiscoverRequest(**fields)
    if vector is not None:
        message.vector.SetInParent()
        message.vector.values.extend(vector)
        message.vector.space = space
    elif text is not None:
        message.text = text
    return pytest.param(message, field, id=case_id)


def bad_filters(case_id: str, field: str, **filters: Any) -> ParameterSet:
    return discover(case_id, f"filters.{field}", filters=discovery_pb2.DiscoverFilters(**filters))


DISCOVER_CASES = [
    discover("no-query", "query", text=None),
    discover("no-query-with-top-k", "query", text=None, top_k=3, tenant="acme"),
    discover("text-empty", "text", text=""),
    discover("text-whitespace", "text", text=" \t\n "),
    discover("text-4097-chars", "text", text="t" * 4097),
    discover("text-nul", "text", text="summarize\x00this"),
    discover("top-k-negative", "top_k", top_k=-1),
    discover("top-k-101", "top_k", top_k=101),
    discover("top-k-int32-min", "top_k", top_k=-(2**31)),
    discover("top-k-int32-max", "top_k", top_k=2**31 - 1),
    discover("vector-383", "vector.values", vector=UNIT[:-1]),
    discover("vector-385", "vector.values", vector=[*UNIT, 1.0]),
    discover("vector-empty", "vector.values", vector=[]),
    discover("vector-nan", "vector.values", vector=[NAN] * DIM),
    discover("vector-inf", "vector.values", vector=[*UNIT[:-1], INF]),
    discover("vector-minus-inf", "vector.values", vector=[-INF, *UNIT[1:]]),
    discover("vector-zero", "vector.values", vector=[0.0] * DIM),
    discover("vector-norm-overflows", "vector.values", vector=[1e19] * DIM),
    discover("vector-norm-underflows", "vector.values", vector=[1e-30] * DIM),
    discover("vector-space-bad-name", "vector_space", vector_space="bad space"),
    discover("vector-space-of-vector-bad-name", "vector.space", text=None, vector=UNIT, space="bad space"),
    discover("input-tokens-over-max", "estimated_input_tokens", estimated_input_tokens=10_000_001),
    discover("output-tokens-uint32-max", "estimated_output_tokens", estimated_output_tokens=2**32 - 1),
    discover("tenant-uppercase", "tenant", text=None, vector=UNIT, tenant="Acme"),
    discover("tenant-trailing-newline", "tenant", text=None, vector=UNIT, tenant="acme\n"),
    bad_filters("max-cost-nan", "max_cost_usd", max_cost_usd=NAN),
    bad_filters("max-cost-negative", "max_cost_usd", max_cost_usd=-0.5),
    bad_filters("max-cost-inf", "max_cost_usd", max_cost_usd=INF),
    bad_filters("max-latency-negative", "max_latency_ms", max_latency_ms=-1.0),
    bad_filters("max-latency-nan", "max_latency_ms", max_latency_ms=NAN),
    bad_filters("min-quality-over-one", "min_quality", min_quality=1.5),
    bad_filters("min-quality-negative", "min_quality", min_quality=-0.1),
    bad_filters("min-quality-nan", "min_quality", min_quality=NAN),
    bad_filters("kind-99", "kinds[0]", kinds=[99]),
    bad_filters("kind-unspecified", "kinds[1]", kinds=[agent_pb2.AGENT_KIND_MODEL, 0]),
    bad_filters("tags-all-empty", "tags_all[0]", tags_all=[""]),
    bad_filters("tags-any-33", "tags_any", tags_any=[f"t{i}" for i in range(33)]),
    bad_filters("region-leading-space", "regions[0]", regions=[" eu-west-1"]),
    bad_filters("input-mode-256-chars", "input_modes[0]", input_modes=["m" * 256]),
    bad_filters("output-mode-nul", "output_modes[0]", output_modes=["te\x00xt"]),
    bad_filters("label-key-space", "labels['bad key']", labels={"bad key": "v"}),
    bad_filters("labels-65", "labels", labels={f"k{i}": "v" for i in range(65)}),
    bad_filters("capability-name-space", "capability_name", capability_name="bad name"),
]


@pytest.mark.parametrize(("message", "field"), DISCOVER_CASES)
def test_discover_rejects(rig: Rig, message: discovery_pb2.DiscoverRequest, field: str) -> None:
    before = snapshot(rig.server)
    assert_invalid(rig.discovery.Discover, message, field)
    assert snapshot(rig.server) == before


HUGE = 20_000  # characters: echoed whole, twice, into the status trailers, this would pass gRPC's 16 KiB limit


def huge_cases() -> list[ParameterSet]:
    def with_cap(**fields: Any) -> registry_pb2.RegisterAgentRequest:
        agent = good_agent()
        agent.capabilities[0].CopyFrom(make_capability(**fields))
        return register(agent)

    k = "k" * HUGE
    cases: list[tuple[str, str, Message, str]] = [
        ("register-name", "RegisterAgent", register(make_agent("n" * HUGE)), "agent.name"),
        ("register-tenant", "RegisterAgent", register(make_agent(SEED, tenant="t" * HUGE)), "agent.tenant"),
        ("register-label-key", "RegisterAgent", register(make_agent(SEED, labels={k: "v"})), "agent.labels["),
        ("register-version", "RegisterAgent", with_cap(version="1.0.0-" + "a" * HUGE), "agent.capabilities[0].version"),
        ("register-version-junk", "RegisterAgent", with_cap(version="é" * HUGE), "agent.capabilities[0].version"),
        (
            "register-description",
            "RegisterAgent",
            with_cap(description="d" * HUGE),
            "agent.capabilities[0].description",
        ),
        (
            "register-vector-space",
            "RegisterAgent",
            with_cap(vector=agent_pb2.Vector(values=UNIT, space="s" * HUGE)),
            "agent.capabilities[0].vector.space",
        ),
        ("get-id", "GetAgent", registry_pb2.GetAgentRequest(agent=agent_pb2.AgentRef(id="i" * HUGE)), "agent.id"),
        ("list-label-key", "ListAgents", registry_pb2.ListAgentsRequest(labels={k: "v"}), "labels["),
        ("list-token", "ListAgents", registry_pb2.ListAgentsRequest(page_token="A" * HUGE), "page_token"),
        ("discover-text", "Discover", discovery_pb2.DiscoverRequest(text="t" * HUGE), "text"),
        (
            "discover-vector-space",
            "Discover",
            discovery_pb2.DiscoverRequest(vector=agent_pb2.Vector(values=UNIT, space="s" * HUGE)),
            "vector.space",
        ),
        (
            "discover-filter-label-key",
            "Discover",
            discovery_pb2.DiscoverRequest(text="hi", filters=discovery_pb2.DiscoverFilters(labels={k: "v"})),
            "filters.labels[",
        ),
    ]
    return [pytest.param(method, message, field, id=case_id) for case_id, method, message, field in cases]


@pytest.mark.parametrize(("method", "message", "field"), huge_cases())
def test_huge_input_is_refused_without_echoing_it_whole(rig: Rig, method: str, message: Message, field: str) -> None:
    """Not RESOURCE_EXHAUSTED from an oversized error: INVALID_ARGUMENT, naming the field, in a short message."""
    stub = rig.discovery if method == "Discover" else rig.registry
    before = snapshot(rig.server)
    with pytest.raises(CapregError) as caught:
        invoke(getattr(stub, method), message)
    error = caught.value
    assert error.code == INVALID, error
    assert error.field is not None and error.field.startswith(field), error.field
    assert len(error.field) < 200 and len(error.message) < 1000
    assert snapshot(rig.server) == before


def test_the_good_requests_behind_the_cases_are_accepted(rig: Rig) -> None:
    """Each case breaks one thing in a request that is otherwise fine (its field is the only fault)."""
    before = snapshot(rig.server)
    answer = rig.client.discover(vector=UNIT, top_k=100, filters=discovery_pb2.DiscoverFilters(min_quality=1.0))
    assert list(answer.matches) == []
    assert [m.agent_name for m in rig.client.discover("summarize this", top_k=1).matches] == ["seed"]
    assert [a.name for a in rig.client.list_agents(page_size=500, name_prefix="seed").agents] == [SEED, "seed-2"]
    assert snapshot(rig.server) == before
    agent = good_agent()
    agent.name = "seed-copy"  # not the seed, so that the seed stays as the other cases expect it
    created = rig.client.register_agent(agent)
    assert created.created
    rig.client.update_agent_status("seed-copy", "draining")
    rig.client.deregister_agent("seed-copy")


def test_rejected_writes_leave_an_existing_agent_as_it_was(rig: Rig) -> None:
    before = snapshot(rig.server)
    seed = rig.client.get_agent(SEED)
    found = rig.client.discover(vector=UNIT, top_k=10)
    broken = good_agent()
    broken.capabilities[1].version = "2.0"
    for call in (
        lambda: rig.client.register_agent(broken),
        lambda: rig.client.register_agent(good_agent(), expected_generation=-1),
        lambda: rig.client.update_agent_status(SEED, agent_pb2.AGENT_STATUS_UNSPECIFIED),
        lambda: rig.client.update_agent_status(SEED, 99, expected_generation=seed.generation),
        lambda: rig.client.update_agent_status(SEED, "inactive", expected_generation=-1),
        lambda: rig.client.deregister_agent(SEED, expected_generation=-5),
    ):
        code, _ = code_of(call)
        assert code == INVALID
    after = rig.client.get_agent(SEED)
    assert after.generation == seed.generation
    assert after.update_time == seed.update_time
    assert after == seed
    assert rig.client.discover(vector=UNIT, top_k=10).matches == found.matches
    assert snapshot(rig.server) == before


# -- fuzzing -----------------------------------------------------------------------------------------

SERVING_SPACE = "minilm-l6-v2"
ODD_TEXT = [
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\ufeffbom",
    "e\u0301",
    "😀",
    "ß",
    "İ",
    "\u0661\u0662",
    "x" * 4097,
    "name\n",
    "\r\n",
    "\x7f",
    "\x85",
    "\U0010ffff",
]
GOOD_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
GOOD_TOKEN = st.from_regex(r"[a-z][a-z0-9/.-]{0,10}", fullmatch=True)
GOOD_TEXT = st.text(max_size=40).map(lambda s: "Does " + s.replace("\x00", ""))
ANY_TEXT = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=150))
ANY_FLOAT = st.one_of(st.sampled_from([NAN, INF, -INF, -1.0, -1e-300, 1e300, 1_000_001.0]), st.floats())
ANY_INT32 = st.integers(-(2**31), 2**31 - 1)


def mostly(good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Good 14 times in 15, so that a fair share of whole messages are valid and get written."""
    return st.integers(0, 14).flatmap(lambda i: bad if i == 0 else good)


KINDS = mostly(st.sampled_from([1, 2, 3]), ANY_INT32).map(agent_pb2.AgentKind.ValueType)
STATUSES = mostly(st.sampled_from([1, 2, 3]), ANY_INT32).map(agent_pb2.AgentStatus.ValueType)


@st.composite
def vectors(draw: st.DrawFn) -> list[float]:
    dim = draw(mostly(st.just(DIM), st.sampled_from([0, 1, DIM - 1, DIM + 1])))
    shape = draw(st.sampled_from(["random", "random", "random", "zero", "huge", "tiny"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = {"random": 1.0, "zero": 0.0, "huge": 1e19, "tiny": 1e-30}[shape]
    values: list[float] = (rng.standard_normal(dim) * scale).astype(np.float32).tolist()
    for _ in range(draw(st.integers(0, 2))):
        if values:
            values[draw(st.integers(0, len(values) - 1))] = draw(st.floats(width=32))
    return values


def vector_message(values: list[float], space: str) -> agent_pb2.Vector:
    return agent_pb2.Vector(values=values, space=space)


SPACES = mostly(st.sampled_from(["", SERVING_SPACE]), st.sampled_from(["nope", "bad space", "\x00"]))


@st.composite
def capabilities(draw: st.DrawFn) -> agent_pb2.Capability:
    cap = agent_pb2.Capability(
        name=draw(mostly(st.sampled_from(["summarize", "translate", "classify"]), ANY_TEXT)),
        version=draw(
            mostly(
                st.builds("{}.{}.{}".format, st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
                st.one_of(st.sampled_from(["1.0", "v1.0.0", "01.0.0", "1.0.0\n", "1\u0661.0.0"]), ANY_TEXT),
            )
        ),
        description=draw(mostly(GOOD_TEXT, ANY_TEXT)),
        examples=draw(mostly(st.lists(GOOD_TEXT, max_size=2), st.lists(ANY_TEXT, max_size=25))),
        tags=draw(mostly(st.lists(GOOD_TOKEN, max_size=3), st.lists(ANY_TEXT, max_size=40))),
        input_modes=draw(mostly(st.lists(GOOD_TOKEN, max_size=2), st.lists(ANY_TEXT, max_size=3))),
        output_modes=draw(mostly(st.lists(GOOD_TOKEN, max_size=2), st.lists(ANY_TEXT, max_size=3))),
        regions=draw(mostly(st.lists(GOOD_TOKEN, max_size=2), st.lists(ANY_TEXT, max_size=3))),
        cost=agent_pb2.Cost(
            per_call_usd=draw(mostly(st.floats(0, 10), ANY_FLOAT)),
            per_1k_input_tokens_usd=draw(mostly(st.floats(0, 10), ANY_FLOAT)),
            per_1k_output_tokens_usd=draw(mostly(st.floats(0, 10), ANY_FLOAT)),
        ),
        latency_p50_ms=draw(mostly(st.floats(0, 1e5), ANY_FLOAT)),
    )
    if draw(st.booleans()):
        cap.quality_prior = draw(mostly(st.floats(0, 1), ANY_FLOAT))
    if draw(st.integers(0, 3)) == 0:
        cap.vector.CopyFrom(vector_message(draw(vectors()), draw(SPACES)))
    return cap


@st.composite
def agents(draw: st.DrawFn) -> agent_pb2.Agent:
    caps = draw(mostly(st.lists(capabilities(), min_size=1, max_size=3), st.lists(capabilities(), max_size=4)))
    if caps and draw(st.integers(0, 19)) == 0:
        caps.append(caps[0])  # a duplicate (name, version)
    return agent_pb2.Agent(
        tenant=draw(mostly(st.sampled_from(["", "default", "acme"]), ANY_TEXT)),
        name=draw(mostly(st.sampled_from(["fuzz-a", "fuzz-b", "fuzz-c"]), ANY_TEXT)),
        kind=draw(KINDS),
        status=draw(st.one_of(st.just(agent_pb2.AGENT_STATUS_UNSPECIFIED), STATUSES)),
        endpoint=draw(mostly(st.just("https://fuzz.example.com"), ANY_TEXT)),
        description=draw(mostly(GOOD_TEXT, ANY_TEXT)),
        labels=draw(
            mostly(
                st.dictionaries(GOOD_NAME, GOOD_NAME, max_size=3),
                st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=4),
            )
        ),
        capabilities=caps,
    )


ASCII_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}", re.ASCII)
TENANT = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?", re.ASCII)
SEMVER_ISH = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-+][0-9A-Za-z.+-]+)?", re.ASCII)


def finite_in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def assert_acceptable(agent: agent_pb2.Agent) -> None:
    """What an accepted agent must look like, by rules written independently of registry.domain.validation."""
    assert ASCII_NAME.fullmatch(agent.name), agent.name
    assert agent.tenant == "" or TENANT.fullmatch(agent.tenant), agent.tenant
    assert all(LABEL_KEY.fullmatch(key) and "\x00" not in value for key, value in agent.labels.items())
    assert agent.kind in (1, 2, 3) and agent.status in (0, 1, 2, 3)
    assert "\x00" not in agent.description + agent.endpoint
    assert 1 <= len(agent.capabilities) <= 64
    assert len({(c.name, c.version) for c in agent.capabilities}) == len(agent.capabilities)
    for cap in agent.capabilities:
        assert ASCII_NAME.fullmatch(cap.name), cap.name
        assert SEMVER_ISH.fullmatch(cap.version) and len(cap.version) <= 128, cap.version
        assert cap.description.strip() and "\x00" not in cap.description
        assert all(e.strip() and "\x00" not in e for e in cap.examples)
        for tokens in (cap.tags, cap.regions, cap.input_modes, cap.output_modes):
            assert all(t and t == t.strip() and not any(category(c) == "Cc" for c in t) for t in tokens), list(tokens)
        assert finite_in(cap.cost.per_call_usd, 0, 1e6) and finite_in(cap.latency_p50_ms, 0, 86_400_000)
        assert finite_in(cap.cost.per_1k_input_tokens_usd, 0, 1e6)
        assert finite_in(cap.cost.per_1k_output_tokens_usd, 0, 1e6)
        assert not cap.HasField("quality_prior") or finite_in(cap.quality_prior, 0, 1)
        if cap.HasField("vector"):
            values = np.asarray(cap.vector.values, dtype=np.float64)
            assert values.shape == (DIM,) and np.isfinite(values).all() and np.any(values)


def expect_outcome(code: grpc.StatusCode, error: CapregError | None, allowed: set[grpc.StatusCode]) -> None:
    event(f"{code.name} {error.field if error else ''}")  # --hypothesis-show-statistics lists these
    assert code in allowed, error
    if code == INVALID:
        assert error is not None and error.field, f"INVALID_ARGUMENT without a field: {error}"


def test_fuzz_register_agent(client: CapregClient, server: support.ServerThread) -> None:
    @FUZZ
    @given(agent=agents(), generation=st.sampled_from([0, 0, 0, -1]))
    def run(agent: agent_pb2.Agent, generation: int) -> None:
        before = snapshot(server)
        code, error = code_of(lambda: client.register_agent(agent, expected_generation=generation))
        spaces = {c.vector.space for c in agent.capabilities if c.HasField("vector")}
        allowed = {OK, INVALID} | ({grpc.StatusCode.NOT_FOUND} if spaces - {"", SERVING_SPACE} else set())
        expect_outcome(code, error, allowed)
        if code != OK:
            assert snapshot(server) == before
            return
        assert_acceptable(agent)
        stored = client.get_agent(agent.name, tenant=agent.tenant)
        assert stored.kind == agent.kind and stored.description == agent.description
        assert dict(stored.labels) == dict(agent.labels)
        sent = {(c.name, c.version, c.description, tuple(c.tags)) for c in agent.capabilities}
        assert {(c.name, c.version, c.description, tuple(c.tags)) for c in stored.capabilities} == sent

    run()
    assert_healthy(client)


@st.composite
def discover_requests(draw: st.DrawFn) -> discovery_pb2.DiscoverRequest:
    message = discovery_pb2.DiscoverRequest(
        tenant=draw(mostly(st.sampled_from(["", "default", "acme"]), ANY_TEXT)),
        top_k=draw(mostly(st.integers(0, 100), ANY_INT32)),
    )
    query = draw(st.sampled_from(["text", "text", "vector", "vector", "none"]))
    if query == "text":
        message.text = draw(mostly(st.text(min_size=1, max_size=60).map(lambda s: "find " + s), ANY_TEXT))
        message.vector_space = draw(SPACES)
    elif query == "vector":
        message.vector.CopyFrom(vector_message(draw(vectors()), draw(SPACES)))
    if draw(st.booleans()):
        filters = message.filters
        filters.kinds.extend(draw(st.lists(KINDS, max_size=3)))
        filters.tags_all.extend(draw(mostly(st.lists(GOOD_TOKEN, max_size=2), st.lists(ANY_TEXT, max_size=40))))
        filters.tags_any.extend(draw(mostly(st.lists(GOOD_TOKEN, max_size=2), st.lists(ANY_TEXT, max_size=3))))
        filters.regions.extend(draw(mostly(st.lists(GOOD_TOKEN, max_size=2), st.lists(ANY_TEXT, max_size=3))))
        filters.labels.update(
            draw(
                mostly(
                    st.dictionaries(GOOD_NAME, GOOD_NAME, max_size=2), st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3)
                )
            )
        )
        for name, good in (("max_cost_usd", 10.0), ("max_latency_ms", 1e5), ("min_quality", 1.0)):
            if draw(st.booleans()):
                setattr(filters, name, draw(mostly(st.floats(0, good), ANY_FLOAT)))
        filters.capability_name = draw(mostly(st.sampled_from(["", "summarize"]), ANY_TEXT))
    for name in ("estimated_input_tokens", "estimated_output_tokens"):
        if draw(st.booleans()):
            setattr(message, name, draw(mostly(st.integers(0, 10_000_000), st.integers(0, 2**32 - 1))))
    return message


def test_fuzz_discover(client: CapregClient, server: support.ServerThread) -> None:
    client.register_agent(make_agent("fuzz-target", make_capability(vector=agent_pb2.Vector(values=UNIT))))
    client.register_agent(make_agent("fuzz-other", make_capability("translate", tags=["nlp"])))

    @FUZZ
    @given(message=discover_requests())
    def run(message: discovery_pb2.DiscoverRequest) -> None:
        before = snapshot(server)
        answer: list[discovery_pb2.DiscoverResponse] = []
        code, error = code_of(lambda: answer.append(client.discover_request(message)))
        space = message.vector.space if message.WhichOneof("query") == "vector" else message.vector_space
        allowed = {OK, INVALID} | ({grpc.StatusCode.NOT_FOUND} if space not in ("", SERVING_SPACE) else set())
        expect_outcome(code, error, allowed)
        assert snapshot(server) == before
        if code == OK:
            matches = answer[0].matches
            assert len(matches) <= (message.top_k or 5)
            assert all(math.isfinite(m.score) and math.isfinite(m.similarity) for m in matches)

    run()
    assert_healthy(client)


FUZZ_NAMES = ["fuzz-a", "fuzz-b", "fuzz-missing"]
REFS = st.one_of(
    st.builds(
        agent_pb2.AgentRef,
        tenant=mostly(st.sampled_from(["", "default"]), ANY_TEXT),
        name=mostly(st.sampled_from(FUZZ_NAMES), ANY_TEXT),
    ),
    st.builds(agent_pb2.AgentRef, id=mostly(st.sampled_from(["", "0" * 36]), ANY_TEXT)),
)
GENERATIONS = mostly(st.sampled_from([0, 0, 1, 2]), st.integers(-(2**63), 2**63 - 1))
REF_REQUESTS: st.SearchStrategy[Message] = st.one_of(
    st.builds(registry_pb2.GetAgentRequest, agent=REFS),
    st.builds(
        registry_pb2.UpdateAgentStatusRequest,
        agent=REFS,
        status=STATUSES,
        expected_generation=GENERATIONS,
    ),
    st.builds(registry_pb2.DeregisterAgentRequest, agent=REFS, expected_generation=GENERATIONS),
    st.builds(
        registry_pb2.ListAgentsRequest,
        tenant=mostly(st.sampled_from(["", "default", "acme"]), ANY_TEXT),
        page_size=mostly(st.integers(0, 500), ANY_INT32),
        page_token=mostly(st.just(""), ANY_TEXT),
        kinds=st.lists(KINDS, max_size=3),
        status=st.one_of(st.just(agent_pb2.AGENT_STATUS_UNSPECIFIED), STATUSES),
        labels=mostly(st.dictionaries(GOOD_NAME, GOOD_NAME, max_size=2), st.dictionaries(ANY_TEXT, ANY_TEXT)),
        name_prefix=mostly(st.sampled_from(["", "fuzz", "%", "_"]), ANY_TEXT),
    ),
)


def test_fuzz_refs_and_listing(client: CapregClient, server: support.ServerThread) -> None:
    channel = grpc.insecure_channel(server.target)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    methods: dict[type[Message], Callable[..., Any]] = {
        registry_pb2.GetAgentRequest: stub.GetAgent,
        registry_pb2.UpdateAgentStatusRequest: stub.UpdateAgentStatus,
        registry_pb2.DeregisterAgentRequest: stub.DeregisterAgent,
        registry_pb2.ListAgentsRequest: stub.ListAgents,
    }

    @FUZZ
    @given(message=REF_REQUESTS)
    def run(message: Message) -> None:
        for name in FUZZ_NAMES[:2]:  # present again after any deregistration; no embedding needed
            client.register_agent(make_agent(name, make_capability(vector=agent_pb2.Vector(values=UNIT))))
        before = snapshot(server)
        code, error = code_of(lambda: invoke(methods[type(message)], message))
        allowed = {OK, INVALID, grpc.StatusCode.NOT_FOUND}
        if getattr(message, "expected_generation", 0) > 0:
            allowed.add(grpc.StatusCode.ABORTED)
        expect_outcome(code, error, allowed)
        if code != OK or isinstance(message, registry_pb2.GetAgentRequest | registry_pb2.ListAgentsRequest):
            assert snapshot(server) == before

    try:
        run()
    finally:
        channel.close()
    assert_healthy(client)


METHODS: dict[str, type[Message]] = {
    "/capreg.v1.RegistryService/RegisterAgent": registry_pb2.RegisterAgentRequest,
    "/capreg.v1.RegistryService/GetAgent": registry_pb2.GetAgentRequest,
    "/capreg.v1.RegistryService/ListAgents": registry_pb2.ListAgentsRequest,
    "/capreg.v1.RegistryService/UpdateAgentStatus": registry_pb2.UpdateAgentStatusRequest,
    "/capreg.v1.RegistryService/DeregisterAgent": registry_pb2.DeregisterAgentRequest,
    "/capreg.v1.DiscoveryService/Discover": discovery_pb2.DiscoverRequest,
}
WELL_FORMED = {
    registry_pb2.RegisterAgentRequest: register(seed_agent()).SerializeToString(),
    registry_pb2.GetAgentRequest: registry_pb2.GetAgentRequest(agent=SEED_REF).SerializeToString(),
    registry_pb2.ListAgentsRequest: registry_pb2.ListAgentsRequest(
        page_size=3, kinds=[agent_pb2.AGENT_KIND_AGENT]
    ).SerializeToString(),
    registry_pb2.UpdateAgentStatusRequest: registry_pb2.UpdateAgentStatusRequest(
        agent=SEED_REF, status=DRAINING
    ).SerializeToString(),
    registry_pb2.DeregisterAgentRequest: registry_pb2.DeregisterAgentRequest(agent=SEED_REF).SerializeToString(),
    discovery_pb2.DiscoverRequest: discovery_pb2.DiscoverRequest(text="summarize", top_k=3).SerializeToString(),
}


@st.composite
def wire_bytes(draw: st.DrawFn, request_type: type[Message]) -> bytes:
    """Random bytes, or a well-formed request truncated, with a byte flipped, or with bytes spliced in."""
    good = WELL_FORMED[request_type]
    how = draw(st.sampled_from(["random", "truncated", "flipped", "spliced"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    cut = draw(st.integers(0, len(good)))
    if how == "truncated":
        return good[:cut]
    if how == "flipped":
        return good[:cut] + bytes([draw(st.integers(0, 255))]) + good[cut + 1 :]
    return good[:cut] + draw(st.binary(min_size=1, max_size=8)) + good[cut:]


def decodes(request_type: type[Message], data: bytes) -> Message | None:
    try:
        return request_type.FromString(data)
    except DecodeError:
        return None


def test_garbage_on_the_wire_gets_a_status_and_the_server_stays_healthy(
    client: CapregClient, server: support.ServerThread
) -> None:
    """Bytes that do not decode get INVALID_ARGUMENT naming `request`; bytes that decode are an ordinary
    request and must get an ordinary answer."""
    client.register_agent(seed_agent())
    channel = grpc.insecure_channel(server.target)

    @FUZZ
    @given(data=st.sampled_from(sorted(METHODS)).flatmap(lambda m: st.tuples(st.just(m), wire_bytes(METHODS[m]))))
    def run(data: tuple[str, bytes]) -> None:
        method, payload = data
        request = decodes(METHODS[method], payload)
        before = snapshot(server)
        raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)  # bytes in, bytes out
        code, error = code_of(lambda: invoke(raw, payload))
        if request is None:
            event(f"undecodable: {code.name}")
            assert code == INVALID and error is not None and error.field == "request", error
            assert snapshot(server) == before
            return
        allowed = {OK, INVALID, grpc.StatusCode.NOT_FOUND}
        if getattr(request, "expected_generation", 0) > 0:
            allowed.add(grpc.StatusCode.ABORTED)
        expect_outcome(code, error, allowed)
        if code != OK:
            assert snapshot(server) == before

    try:
        run()
    finally:
        channel.close()
    assert_healthy(client)


def test_undecodable_bytes_are_invalid_argument(client: CapregClient, server: support.ServerThread) -> None:
    """A request that does not decode is the caller's error, not UNKNOWN."""
    with grpc.insecure_channel(server.target) as channel:
        for method in METHODS:
            code, error = code_of(partial(invoke, channel.unary_unary(method), b"\xff\xff\xff"))
            assert code == INVALID, error
            assert error is not None and error.field == "request" and "does not decode" in error.message
        bad_utf8 = b"\x0a\x03\x1a\x01\xc3"  # agent { name: <invalid UTF-8> }
        code, error = code_of(lambda: invoke(channel.unary_unary(next(iter(METHODS))), bad_utf8))
        assert code == INVALID, error
    assert_healthy(client)


def assert_healthy(client: CapregClient) -> None:
    assert client.health()
    assert client.discover(vector=UNIT, top_k=1).explanation.plan in ("exact", "empty", "hnsw", "exact-fallback")
