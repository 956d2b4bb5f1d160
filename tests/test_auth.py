"""Authentication and authorization against real servers with authentication on, on SQLite and PostgreSQL.

The matrix calls every RPC of every capreg service as every kind of caller (no key, a bad key, a key with
each role of tenant "acme", the cluster operator), aimed at the caller's own tenant and at "globex" (by
naming it, and by id alone), and checks the status code, that a refused call changed and audited nothing,
and that an answer never holds another tenant's data. Then: the key lifecycle (across two servers), the
audit log, and `capreg keys` / `capreg audit`."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import pkgutil
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import capreg.v1
import grpc
import pytest
from capreg.v1 import admin_pb2, agent_pb2, budget_pb2, discovery_pb2, keys_pb2, outcome_pb2, policy_pb2, registry_pb2
from capreg_client import CapregClient, CapregError
from click.testing import CliRunner
from google.protobuf import duration_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Engine, func, select

from registry.cli.keys import parse_duration
from registry.cli.main import cli
from registry.domain.auth import PERMISSIONS, Role
from registry.embedding.sentence import MINILM_NAME, SentenceTransformerEmbedder
from registry.store import tables as t
from registry.store.engine import make_engine
from registry.transport.auth import AUDITED
from tests import support
from tests.conftest import BACKENDS
from tests.support import ServerThread, make_agent, running_server

ME, OTHER = "acme", "globex"
ROLES = (Role.AGENT.value, Role.ORCHESTRATOR.value, Role.OPERATOR.value)
CLUSTER, NO_KEY, BAD_KEY = Role.CLUSTER_OPERATOR.value, "no-key", "bad-key"
IDENTITIES = (NO_KEY, BAD_KEY, *ROLES, CLUSTER)
OK, DENIED, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
TEXT = "summarize this document"


def secret_of(tenant: str) -> str:
    """Every private thing of a tenant carries this in its name, so a leak shows in the answer's bytes."""
    return f"{tenant}-secret"


def proto_methods() -> dict[str, MethodDescriptor]:
    """Every method of every service in the capreg.v1 protos, by its gRPC path."""
    methods = {}
    for info in pkgutil.iter_modules(capreg.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"capreg.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    methods[f"/{service.full_name}/{method.name}"] = method
    return methods


RPCS = proto_methods()


# -- the world every matrix call runs in: one server per backend, seeded through the API ---------------


@dataclass
class Seed:
    """What a tenant has before the matrix runs."""

    agent: agent_pb2.Agent
    policy: policy_pb2.Policy
    budget: budget_pb2.Budget
    reservation: budget_pb2.Reservation


@dataclass
class World:
    server: ServerThread
    engine: Engine
    channel: grpc.Channel
    admin: CapregClient  # the cluster operator (the first-start key)
    tokens: dict[str, str] = field(default_factory=dict)  # identity -> token; the roles are acme's keys
    seeds: dict[str, Seed] = field(default_factory=dict)

    @staticmethod
    def name(tenant: str, what: str) -> str:
        return f"{secret_of(tenant)}-{what}-{uuid.uuid4().hex[:8]}"

    def new_agent(self, tenant: str) -> agent_pb2.Agent:
        return self.admin.register_agent(make_agent(self.name(tenant, "agent"), tenant=tenant)).agent

    def new_policy(self, tenant: str) -> policy_pb2.Policy:
        return self.admin.create_policy(policy(tenant, self.name(tenant, "policy"))).policy

    def spare_space(self) -> str:
        """A ready vector space that does not serve (made on first use): promoting it is always allowed."""
        spaces = {s.name: s for s in self.admin.list_spaces()}
        if "matrix-spare" not in spaces:
            self.admin.create_space("matrix-spare", MINILM_NAME, "{name}: {description}")
            list(self.admin.backfill_space("matrix-spare"))
            spaces = {s.name: s for s in self.admin.list_spaces()}
        serving = next(s.name for s in spaces.values() if s.state == admin_pb2.SPACE_STATE_SERVING)
        return "matrix-spare" if serving != "matrix-spare" else VECTOR_SPACE

    def rollback_request(self) -> admin_pb2.RollbackSpaceRequest:
        """A rollback that can succeed: the serving space is given a ready predecessor first if it has none."""
        serving = next(s for s in self.admin.list_spaces() if s.state == admin_pb2.SPACE_STATE_SERVING)
        if not serving.previous_serving:
            self.admin.promote_space(self.spare_space())
        return admin_pb2.RollbackSpaceRequest()

    @staticmethod
    def space_name() -> str:
        return f"matrix-space-{uuid.uuid4().hex[:8]}"  # spaces are cluster-wide: no tenant's name in them

    def new_space(self, tenant: str) -> str:
        name = self.space_name()
        self.admin.create_space(name, MINILM_NAME, "{name}: {description}")
        return name

    def new_budget(self, tenant: str) -> budget_pb2.Budget:
        return self.admin.create_budget(self.name(tenant, "budget"), 10, period="total", tenant=tenant).budget

    def new_reservation(self, tenant: str) -> str:
        return self.admin.reserve(self.seeds[tenant].budget.id, 0.01, tenant=tenant).reservation.id

    def new_key(self, tenant: str) -> str:
        return self.admin.create_key(self.name(tenant, "key"), ["agent"], tenant=tenant).key.id

    def writes(self) -> tuple[int, int]:
        """(last change_log seq, last audit_log id): a refused call moves neither."""
        with self.engine.connect() as conn:
            seq = conn.execute(select(func.coalesce(func.max(t.change_log.c.seq), 0))).scalar_one()
            audit = conn.execute(select(func.coalesce(func.max(t.audit_log.c.id), 0))).scalar_one()
        return int(seq), int(audit)


def policy(tenant: str, name: str) -> policy_pb2.Policy:
    """An allow rule that changes nothing under the default ALLOW."""
    return policy_pb2.Policy(
        tenant=tenant,
        name=name,
        effect=policy_pb2.POLICY_EFFECT_ALLOW,
        subject=policy_pb2.PolicySubject(everyone=True),
        target=policy_pb2.PolicyTarget(tags_any=["never-used"]),
    )


def seed(w: World, tenant: str, other: str) -> None:
    admin = w.admin
    agent = admin.register_agent(make_agent(f"{secret_of(tenant)}-agent", tenant=tenant)).agent
    admin.register_agent(make_agent(f"{tenant}-public", tenant=tenant, visibility=agent_pb2.VISIBILITY_PUBLIC))
    admin.register_agent(
        make_agent(f"{tenant}-shared", tenant=tenant, visibility=agent_pb2.VISIBILITY_SHARED, shared_with=[other])
    )
    admin.register_agent(  # shared, but not with the tenants in the matrix
        make_agent(
            f"{secret_of(tenant)}-initech",
            tenant=tenant,
            visibility=agent_pb2.VISIBILITY_SHARED,
            shared_with=["initech"],
        )
    )
    created = admin.create_policy(policy(tenant, f"{secret_of(tenant)}-policy")).policy
    budget = admin.create_budget(f"{secret_of(tenant)}-budget", 1000, period="total", tenant=tenant).budget
    reservation = admin.reserve(budget.id, 0.01, tenant=tenant).reservation
    w.seeds[tenant] = Seed(agent, created, budget, reservation)


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[World]:
    """One server per backend for the whole matrix, on a database of its own."""
    data = tmp_path_factory.mktemp(f"auth-{request.param}")
    pg_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{data / 'capreg.db'}"
    else:
        try:
            pg_name = support.create_pg_database()
        except Exception as exc:
            pytest.fail(f"PostgreSQL at {support.PG_ADMIN_URL} is unreachable ({exc})", pytrace=False)
        url = support.pg_url(pg_name)
        support.migrated_engine(url).dispose()
    try:
        with running_server(data / "server", url, embedder, auth_enabled=True) as server:
            operator = (data / "server" / "operator.key").read_text().strip()
            with (
                CapregClient(server.target, api_key=operator, timeout=30) as admin,
                grpc.insecure_channel(server.target) as channel,
            ):
                w = World(server, make_engine(url), channel, admin, tokens={CLUSTER: operator})
                for role in ROLES:
                    w.tokens[role] = admin.create_key(f"{secret_of(ME)}-{role}", [role], tenant=ME).token
                    admin.create_key(f"{secret_of(OTHER)}-{role}", [role], tenant=OTHER)
                good = w.tokens[Role.OPERATOR.value]
                w.tokens[BAD_KEY] = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
                seed(w, ME, OTHER)
                seed(w, OTHER, ME)
                yield w
                w.engine.dispose()
    finally:
        if pg_name is not None:
            support.drop_pg_database(pg_name)


# -- one valid request per RPC --------------------------------------------------------------------------

# build(world, target tenant, the tenant the request names ("" for none), address by id) -> request
Build = Callable[[World, str, str, bool], Message]


@dataclass(frozen=True)
class Case:
    build: Build
    named: bool = True  # the request can name a tenant
    by_id: bool = False  # the request can address an object by id alone
    listed: str = ""  # a repeated field of the answer that must not be empty


def agent_ref(agent: agent_pb2.Agent, tenant: str, by_id: bool) -> agent_pb2.AgentRef:
    return agent_pb2.AgentRef(id=agent.id) if by_id else agent_pb2.AgentRef(tenant=tenant, name=agent.name)


def budget_ref(budget: budget_pb2.Budget, tenant: str, by_id: bool) -> budget_pb2.BudgetRef:
    return budget_pb2.BudgetRef(id=budget.id) if by_id else budget_pb2.BudgetRef(tenant=tenant, name=budget.name)


def policy_ref(found: policy_pb2.Policy, tenant: str, by_id: bool) -> policy_pb2.PolicyRef:
    return policy_pb2.PolicyRef(id=found.id) if by_id else policy_pb2.PolicyRef(tenant=tenant, name=found.name)


REG, DISC = "/capreg.v1.RegistryService/", "/capreg.v1.DiscoveryService/"
BUD, POL = "/capreg.v1.BudgetService/", "/capreg.v1.PolicyService/"
KEYS, AUDIT = "/capreg.v1.KeyService/", "/capreg.v1.AuditService/"
ADMIN = "/capreg.v1.AdminService/"
OUT = "/capreg.v1.OutcomeService/"
VECTOR_SPACE = "minilm-l6-v2"  # the space every test server starts with
ACTIVE = agent_pb2.AGENT_STATUS_ACTIVE


def card_json(name: str) -> str:
    """A minimal A2A v1.0 Agent Card."""
    return json.dumps(
        {
            "name": name,
            "description": "Answers questions about invoices.",
            "version": "1.0.0",
            "supportedInterfaces": [{"url": f"https://{name}.example.com/a2a", "protocolBinding": "JSONRPC"}],
            "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": [{"id": "invoices", "name": "invoices", "description": "Answers invoice questions.", "tags": []}],
        }
    )


def server_json(name: str) -> str:
    """A minimal MCP server.json with a remote."""
    return json.dumps(
        {
            "name": f"io.example/{name}",
            "description": "Looks up invoices.",
            "version": "1.0.0",
            "remotes": [{"type": "streamable-http", "url": f"https://{name}.example.com/mcp"}],
        }
    )


# Destructive RPCs (deregister, delete, commit, release, revoke) act on something made for the call.
CASES: dict[str, Case] = {
    REG + "RegisterAgent": Case(
        lambda w, t, f, i: registry_pb2.RegisterAgentRequest(agent=make_agent(w.name(t, "agent"), tenant=f))
    ),
    REG + "RegisterAgents": Case(
        lambda w, t, f, i: registry_pb2.RegisterAgentsRequest(
            agents=[
                registry_pb2.RegisterAgentRequest(agent=make_agent(w.name(t, "bulk-a"), tenant=f)),
                registry_pb2.RegisterAgentRequest(agent=make_agent(w.name(t, "bulk-b"), tenant=f)),
            ]
        )
    ),
    REG + "ImportAgentCard": Case(
        lambda w, t, f, i: registry_pb2.ImportAgentCardRequest(tenant=f, card_json=card_json(w.name(t, "card")))
    ),
    REG + "ImportMcpServer": Case(
        lambda w, t, f, i: registry_pb2.ImportMcpServerRequest(tenant=f, server_json=server_json(w.name(t, "mcp")))
    ),
    REG + "ExportAgentCard": Case(
        lambda w, t, f, i: registry_pb2.ExportAgentCardRequest(agent=agent_ref(w.seeds[t].agent, f, i)), by_id=True
    ),
    REG + "ExportMcpServer": Case(
        lambda w, t, f, i: registry_pb2.ExportMcpServerRequest(agent=agent_ref(w.seeds[t].agent, f, i)), by_id=True
    ),
    REG + "UpdateAgentStatus": Case(
        lambda w, t, f, i: registry_pb2.UpdateAgentStatusRequest(
            agent=agent_ref(w.seeds[t].agent, f, i), status=ACTIVE
        ),
        by_id=True,
    ),
    REG + "DeregisterAgent": Case(
        lambda w, t, f, i: registry_pb2.DeregisterAgentRequest(agent=agent_ref(w.new_agent(t), f, i)), by_id=True
    ),
    REG + "Heartbeat": Case(
        lambda w, t, f, i: registry_pb2.HeartbeatRequest(
            agent=agent_ref(w.seeds[t].agent, f, i), lease_ttl=duration_pb2.Duration(seconds=3600)
        ),
        by_id=True,
    ),
    REG + "KeepAlive": Case(  # streaming: admitted once, when the stream opens
        lambda w, t, f, i: registry_pb2.HeartbeatRequest(
            agent=agent_ref(w.seeds[t].agent, f, i), lease_ttl=duration_pb2.Duration(seconds=3600)
        ),
        by_id=True,
    ),
    REG + "GetAgent": Case(
        lambda w, t, f, i: registry_pb2.GetAgentRequest(agent=agent_ref(w.seeds[t].agent, f, i)), by_id=True
    ),
    REG + "ListAgents": Case(
        lambda w, t, f, i: registry_pb2.ListAgentsRequest(tenant=f, page_size=500), listed="agents"
    ),
    DISC + "Discover": Case(  # by id: another tenant's budget
        lambda w, t, f, i: discovery_pb2.DiscoverRequest(
            tenant=f, text=TEXT, top_k=100, budget_id=w.seeds[t].budget.id
        ),
        by_id=True,
        listed="matches",
    ),
    DISC + "WatchDiscover": Case(  # streaming, endless: the first answer, then the watch is cancelled
        lambda w, t, f, i: discovery_pb2.WatchDiscoverRequest(
            discover=discovery_pb2.DiscoverRequest(tenant=f, text=TEXT, top_k=100, budget_id=w.seeds[t].budget.id)
        ),
        by_id=True,
    ),
    OUT + "ReportOutcome": Case(  # by id: another tenant's private capability is NOT_FOUND
        lambda w, t, f, i: outcome_pb2.ReportOutcomeRequest(
            tenant=f, capability_id=w.seeds[t].agent.capabilities[0].id, text=TEXT, success=True
        ),
        by_id=True,
    ),
    BUD + "CreateBudget": Case(
        lambda w, t, f, i: budget_pb2.CreateBudgetRequest(
            budget=budget_pb2.Budget(
                tenant=f, name=w.name(t, "budget"), limit_usd=10, period=budget_pb2.BUDGET_PERIOD_TOTAL
            )
        )
    ),
    BUD + "GetBudget": Case(
        lambda w, t, f, i: budget_pb2.GetBudgetRequest(budget=budget_ref(w.seeds[t].budget, f, i)), by_id=True
    ),
    BUD + "ListBudgets": Case(lambda w, t, f, i: budget_pb2.ListBudgetsRequest(tenant=f), listed="budgets"),
    BUD + "UpdateBudget": Case(
        lambda w, t, f, i: budget_pb2.UpdateBudgetRequest(budget=budget_ref(w.seeds[t].budget, f, i), limit_usd=1000),
        by_id=True,
    ),
    BUD + "DeleteBudget": Case(
        lambda w, t, f, i: budget_pb2.DeleteBudgetRequest(budget=budget_ref(w.new_budget(t), f, i)), by_id=True
    ),
    BUD + "Reserve": Case(
        lambda w, t, f, i: budget_pb2.ReserveRequest(tenant=f, budget_id=w.seeds[t].budget.id, amount_usd=0.01),
        by_id=True,
    ),
    BUD + "Commit": Case(
        lambda w, t, f, i: budget_pb2.CommitRequest(tenant=f, reservation_id=w.new_reservation(t)), by_id=True
    ),
    BUD + "Release": Case(
        lambda w, t, f, i: budget_pb2.ReleaseRequest(tenant=f, reservation_id=w.new_reservation(t)), by_id=True
    ),
    BUD + "GetReservation": Case(
        lambda w, t, f, i: budget_pb2.GetReservationRequest(tenant=f, reservation_id=w.seeds[t].reservation.id),
        by_id=True,
    ),
    POL + "CreatePolicy": Case(
        lambda w, t, f, i: policy_pb2.CreatePolicyRequest(policy=policy(f, w.name(t, "policy")))
    ),
    POL + "GetPolicy": Case(
        lambda w, t, f, i: policy_pb2.GetPolicyRequest(policy=policy_ref(w.seeds[t].policy, f, i)), by_id=True
    ),
    POL + "ListPolicies": Case(lambda w, t, f, i: policy_pb2.ListPoliciesRequest(tenant=f), listed="policies"),
    POL + "UpdatePolicy": Case(
        lambda w, t, f, i: policy_pb2.UpdatePolicyRequest(policy=policy(f, w.seeds[t].policy.name))
    ),
    POL + "DeletePolicy": Case(
        lambda w, t, f, i: policy_pb2.DeletePolicyRequest(policy=policy_ref(w.new_policy(t), f, i)), by_id=True
    ),
    POL + "GetTenantSettings": Case(lambda w, t, f, i: policy_pb2.GetTenantSettingsRequest(tenant=f)),
    POL + "UpdateTenantSettings": Case(
        lambda w, t, f, i: policy_pb2.UpdateTenantSettingsRequest(
            settings=policy_pb2.TenantSettings(tenant=f, default_effect=policy_pb2.POLICY_EFFECT_ALLOW)
        )
    ),
    KEYS + "CreateKey": Case(
        lambda w, t, f, i: keys_pb2.CreateKeyRequest(tenant=f, name=w.name(t, "key"), roles=["agent"])
    ),
    KEYS + "ListKeys": Case(lambda w, t, f, i: keys_pb2.ListKeysRequest(tenant=f), listed="keys"),
    KEYS + "RevokeKey": Case(lambda w, t, f, i: keys_pb2.RevokeKeyRequest(id=w.new_key(t)), named=False, by_id=True),
    ADMIN + "GetIndexStatus": Case(lambda w, t, f, i: admin_pb2.GetIndexStatusRequest(), named=False),
    # Vector spaces are cluster-wide: every other identity is refused, and nothing a refusal touches changes.
    ADMIN + "CreateSpace": Case(
        lambda w, t, f, i: admin_pb2.CreateSpaceRequest(
            name=w.space_name(), model=MINILM_NAME, template="{name}: {description}"
        ),
        named=False,
    ),
    ADMIN + "GetSpace": Case(lambda w, t, f, i: admin_pb2.GetSpaceRequest(name=VECTOR_SPACE), named=False),
    ADMIN + "ListSpaces": Case(lambda w, t, f, i: admin_pb2.ListSpacesRequest(), named=False, listed="spaces"),
    ADMIN + "BackfillSpace": Case(lambda w, t, f, i: admin_pb2.BackfillSpaceRequest(name=w.new_space(t)), named=False),
    ADMIN + "CompareSpaces": Case(
        lambda w, t, f, i: admin_pb2.CompareSpacesRequest(
            old=VECTOR_SPACE, new=VECTOR_SPACE, tasks=[admin_pb2.CompareTask(text=TEXT)]
        ),
        named=False,
    ),
    ADMIN + "SetShadow": Case(lambda w, t, f, i: admin_pb2.SetShadowRequest(name=w.new_space(t)), named=False),
    ADMIN + "PromoteSpace": Case(lambda w, t, f, i: admin_pb2.PromoteSpaceRequest(name=w.spare_space()), named=False),
    ADMIN + "RollbackSpace": Case(lambda w, t, f, i: w.rollback_request(), named=False),
    ADMIN + "RetireSpace": Case(lambda w, t, f, i: admin_pb2.RetireSpaceRequest(name=w.new_space(t)), named=False),
    AUDIT + "ListAudit": Case(lambda w, t, f, i: keys_pb2.ListAuditRequest(tenant=f, limit=1000), listed="entries"),
}

# scope -> (the tenant targeted, the tenant the request names, by id), for a key of tenant ME.
SCOPES = {
    "own": (ME, ME, False),
    "own-unnamed": (ME, "", False),  # the key's tenant, never "default"
    "own-by-id": (ME, "", True),
    "other": (OTHER, OTHER, False),  # PERMISSION_DENIED
    "other-by-id": (OTHER, "", True),  # NOT_FOUND, exactly like an id that does not exist
}


def scopes_for(method: str, identity: str) -> list[str]:
    case = CASES.get(method, Case(lambda w, t, f, i: keys_pb2.ListKeysRequest()))
    if identity in (NO_KEY, BAD_KEY):
        return ["own"]  # refused before anything is read
    if identity == CLUSTER:
        return ["own", "other"]  # naming the tenant, or by id (RevokeKey)
    scopes = ["own-unnamed"]
    if case.named:
        scopes += ["own", "other"]
    if case.by_id:
        scopes += ["own-by-id", "other-by-id"]
    return scopes


def expected(method: str, identity: str, scope: str) -> grpc.StatusCode:
    if identity in (NO_KEY, BAD_KEY):
        return UNAUTHENTICATED
    if identity == CLUSTER:
        return OK
    if identity not in PERMISSIONS[method]:
        return DENIED
    return {"other": DENIED, "other-by-id": NOT_FOUND}.get(scope, OK)


MATRIX = [
    pytest.param(method, identity, scope, id=f"{method.rsplit('/', 1)[1]}-{identity}-{scope}")
    for method in sorted(PERMISSIONS)
    for identity in IDENTITIES
    for scope in scopes_for(method, identity)
]


ENDLESS = {DISC + "WatchDiscover"}  # server streams that run until the caller cancels them


def invoke(w: World, method: str, request: Message, identity: str) -> tuple[grpc.StatusCode, Message | None, str]:
    response_class = GetMessageClass(RPCS[method].output_type)
    stub: grpc.UnaryUnaryMultiCallable[Message, Message] = w.channel.unary_unary(
        method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
    )
    metadata = () if identity == NO_KEY else (("authorization", f"Bearer {w.tokens[identity]}"),)
    try:
        if RPCS[method].client_streaming:  # one message, then the first answer
            streamed: grpc.StreamStreamMultiCallable[Message, Message] = w.channel.stream_stream(
                method,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            return OK, next(iter(streamed(iter([request]), metadata=metadata, timeout=30))), ""
        if method in ENDLESS:  # the first answer is the one to judge; the stream would never end by itself
            endless: grpc.UnaryStreamMultiCallable[Message, Message] = w.channel.unary_stream(
                method,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            call = endless(request, metadata=metadata, timeout=30)
            try:
                return OK, next(iter(call)), ""
            finally:
                call.cancel()
        if RPCS[method].server_streaming:  # to its end (a backfill left running would write during later calls)
            answers: grpc.UnaryStreamMultiCallable[Message, Message] = w.channel.unary_stream(
                method,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            every = list(answers(request, metadata=metadata, timeout=30))
            return OK, every[0], ""
        return OK, stub(request, metadata=metadata, timeout=30), ""
    except grpc.RpcError as error:
        return error.code(), None, error.details() or ""


def tenants_in(message: Message) -> set[str]:
    """Every `tenant` field anywhere in a message."""
    found: set[str] = set()
    for fd, value in message.ListFields():
        if fd.name == "tenant" and fd.type == FieldDescriptor.TYPE_STRING:
            found.add(value)
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            for item in value if fd.is_repeated else [value]:
                found |= tenants_in(item)
    return found


def check_answer(method: str, response: Message, tenant: str) -> None:
    """An answer for `tenant` holds its data only (Discover: also what others made public or shared with it)."""
    foreign = OTHER if tenant == ME else ME
    assert secret_of(foreign).encode() not in response.SerializeToString()
    case = CASES[method]
    if case.listed:
        assert len(getattr(response, case.listed)) > 0, f"{method} answered an empty {case.listed}"
    if isinstance(response, discovery_pb2.WatchDiscoverResponse):
        response = response.answer
    if isinstance(response, discovery_pb2.DiscoverResponse):
        names = {m.agent_name for m in response.matches}
        assert {f"{foreign}-public", f"{foreign}-shared", f"{secret_of(tenant)}-agent"} <= names
        for match in response.matches:
            assert match.tenant == tenant or match.agent_name in (f"{foreign}-public", f"{foreign}-shared")
    else:
        assert tenants_in(response) <= {tenant}, f"{method} answered data of {tenants_in(response) - {tenant}}"


@pytest.mark.parametrize(("method", "identity", "scope"), MATRIX)
def test_every_rpc_role_and_tenant(world: World, method: str, identity: str, scope: str) -> None:
    case = CASES.get(method)
    assert case is not None, f"{method} is in PERMISSIONS but has no Case in this matrix: add one"
    target, named, by_id = SCOPES[scope]
    request = case.build(world, target, named if case.named else "", by_id)
    before = world.writes()
    code, response, details = invoke(world, method, request, identity)
    want = expected(method, identity, scope)
    assert code == want, f"{method} as {identity} ({scope}): {code.name} {details!r}, expected {want.name}"
    if code == OK:
        assert response is not None
        check_answer(method, response, target)
    else:
        assert world.writes() == before, "a refused call changed or audited something"
        assert secret_of(OTHER) not in details


def test_the_matrix_covers_every_rpc_of_every_service() -> None:
    """A new RPC cannot be forgotten: it needs a row in PERMISSIONS, and a Case here."""
    assert set(PERMISSIONS) == set(RPCS)
    assert set(CASES) == set(RPCS)
    assert {identity for _, identity, _ in (p.values for p in MATRIX)} == set(IDENTITIES)
    for method, roles in PERMISSIONS.items():
        assert roles <= {r.value for r in Role}
        assert roles or method.startswith(ADMIN), f"{method} is closed to every role but cluster-operator"


def test_the_permission_table_says_what_each_role_may_do() -> None:
    """The matrix takes its expectations from PERMISSIONS; this pins the table itself, so a role cannot
    gain an RPC by accident."""
    by_role = {role: {m.rsplit("/", 1)[1] for m, roles in PERMISSIONS.items() if role in roles} for role in ROLES}
    assert by_role[Role.AGENT.value] == {
        "RegisterAgent",
        "RegisterAgents",
        "UpdateAgentStatus",
        "DeregisterAgent",
        "Heartbeat",
        "KeepAlive",
        "GetAgent",
        "ListAgents",
        "ImportAgentCard",
        "ImportMcpServer",
        "ExportAgentCard",
        "ExportMcpServer",
    }
    assert by_role[Role.ORCHESTRATOR.value] == {
        "GetAgent", "ListAgents", "ExportAgentCard", "ExportMcpServer", "Discover", "WatchDiscover", "ReportOutcome",
        "GetBudget", "ListBudgets", "Reserve", "Commit", "Release", "GetReservation",
    }  # fmt: skip
    assert by_role[Role.OPERATOR.value] == {m.rsplit("/", 1)[1] for m in RPCS if PERMISSIONS[m]}
    assert not [m for m, roles in PERMISSIONS.items() if CLUSTER in roles]  # it may call everything anyway


def test_every_write_is_audited() -> None:
    """Reads, Discover, outcomes and budget usage (reserve, commit, release: the hot path) are not audited."""
    not_audited = {"Reserve", "Commit", "Release", "Discover", "ReportOutcome"}
    writes = {
        m
        for m in RPCS
        if m.rsplit("/", 1)[1].startswith(
            (
                "Create",
                "Update",
                "Delete",
                "Register",
                "Deregister",
                "Import",
                "Revoke",
                "SetShadow",
                "Promote",
                "Rollback",
                "Retire",
            )
        )
    }
    assert set(AUDITED) == writes
    assert not {m for m in AUDITED if m.rsplit("/", 1)[1] in not_audited}


# -- key lifecycle --------------------------------------------------------------------------------------


def _code(action: Callable[[], Any]) -> grpc.StatusCode:
    try:
        action()
    except CapregError as error:
        return error.code
    return OK


def _dump(engine: Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(repr(tuple(row)) for table in t.metadata.sorted_tables for row in conn.execute(select(table)))


def _operator_key(data: Path) -> str:
    path = data / "operator.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text().strip()


def test_key_lifecycle(
    database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # whatever the server logs, at any level, holds no secret
    data = tmp_path / "data"
    with running_server(data, database_url, embedder, auth_enabled=True) as server:
        operator = _operator_key(data)
        with CapregClient(server.target, api_key=operator) as admin:
            acme_op_token = admin.create_key("acme-admin", ["operator"], tenant=ME).token
            globex_key = admin.create_key("globex-bot", ["agent"], tenant=OTHER).key
        with CapregClient(server.target, api_key=acme_op_token) as acme_op:
            created = acme_op.create_key("ci-bot", ["agent"])
            assert created.key.tenant == ME and created.key.created_by.startswith("acme-admin (")
            token = created.token
            with CapregClient(server.target, api_key=token) as bot:
                # created -> used
                assert bot.register_agent(make_agent("bot-agent")).agent.tenant == ME
                # revoked -> refused from the very next call, on this server
                revoked = acme_op.revoke_key(created.key.id)
                assert revoked.HasField("revoke_time")
                with pytest.raises(CapregError, match="revoked") as refused:
                    bot.list_agents()
                assert refused.value.code == UNAUTHENTICATED

            # A tenant operator administers its own tenant's keys only.
            assert _code(lambda: acme_op.create_key("root", ["cluster-operator"])) == DENIED
            assert _code(lambda: acme_op.create_key("root", ["cluster-operator"], tenant="*")) == DENIED
            assert _code(lambda: acme_op.create_key("root", ["operator"], tenant="*")) == DENIED
            assert _code(lambda: acme_op.create_key("spy", ["agent"], tenant=OTHER)) == DENIED
            assert _code(lambda: acme_op.revoke_key(globex_key.id)) == NOT_FOUND
            assert _code(lambda: acme_op.revoke_key("0123456789abcdef")) == NOT_FOUND
            assert {k.tenant for k in acme_op.list_keys()} == {ME}

            # expired: made to expire in an hour, then the server's injected clock (KeyService(clock=...))
            # moves two hours on
            in_an_hour = Timestamp()
            in_an_hour.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
            expiring = acme_op.create_key("short-lived", ["agent"], expire_time=in_an_hour)
            assert expiring.key.HasField("expire_time")
            with CapregClient(server.target, api_key=expiring.token) as short:
                short.list_agents()
                keys = server.app.keys
                real_clock = keys._clock
                keys._clock = lambda: real_clock() + timedelta(hours=2)
                try:
                    with pytest.raises(CapregError, match="expired") as refused:
                        short.list_agents()
                    assert refused.value.code == UNAUTHENTICATED
                finally:
                    keys._clock = real_clock
                short.list_agents()  # the same key, before its expiry
            in_the_past = Timestamp()
            in_the_past.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
            too_late = lambda: acme_op.create_key("late", ["agent"], expire_time=in_the_past)  # noqa: E731
            assert _code(too_late) == grpc.StatusCode.INVALID_ARGUMENT

        # The token is never stored, nor logged: the api_keys row holds the sha256 of its secret only.
        secret = token.split("_", 2)[2]
        engine = make_engine(database_url)
        try:
            dump = _dump(engine)
            with engine.connect() as conn:
                stored = conn.execute(select(t.api_keys.c.secret_sha256).where(t.api_keys.c.id == created.key.id))
                assert stored.scalar_one() == hashlib.sha256(secret.encode()).hexdigest()
        finally:
            engine.dispose()
        for leaked in (secret, acme_op_token.split("_", 2)[2], operator.split("_", 2)[2]):
            assert leaked not in dump
            assert leaked not in caplog.text
            for path in data.rglob("*"):
                if path.is_file() and path.name != "operator.key":
                    assert leaked.encode() not in path.read_bytes(), path
        assert "capreg serving on" in caplog.text  # the server logged into what was searched


BAD_CREDENTIALS = [
    ((), "needs an API key"),
    ((("authorization", "Basic dXNlcjpwYXNz"),), "Bearer"),
    ((("authorization", "Bearer not-a-capreg-key"),), "not a capreg API key"),
    ((("authorization", "Bearer capreg_0123456789abcdef_wrong"),), "not valid"),
]


def test_requests_without_a_valid_key_are_unauthenticated(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    data = tmp_path / "data"
    with (
        running_server(data, f"sqlite:///{tmp_path / 'capreg.db'}", embedder, auth_enabled=True) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub: grpc.UnaryUnaryMultiCallable[Message, registry_pb2.ListAgentsResponse] = channel.unary_unary(
            "/capreg.v1.RegistryService/ListAgents",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=registry_pb2.ListAgentsResponse.FromString,
        )
        for metadata, message in BAD_CREDENTIALS:
            with pytest.raises(grpc.RpcError) as refused:
                stub(registry_pb2.ListAgentsRequest(), metadata=metadata, timeout=10)
            assert refused.value.code() == UNAUTHENTICATED, metadata
            assert message in (refused.value.details() or ""), metadata
        with CapregClient(server.target) as anonymous:
            assert anonymous.health()  # health checks stay open


def test_a_revocation_reaches_every_server(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """Two servers on one PostgreSQL: a key revoked through A is refused by A at once, and by B as soon as B
    reads the key change (its follower, every change_poll_s, or a change notification; driven by hand here, so
    the test does not wait for either)."""
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    with (
        running_server(tmp_path / "a", pg_database, embedder, auth_enabled=True, change_poll_s=3600) as a,
        running_server(tmp_path / "b", pg_database, embedder, auth_enabled=True, change_poll_s=3600) as b,
    ):
        assert not (tmp_path / "b" / "operator.key").exists()  # one first start only
        with CapregClient(a.target, api_key=_operator_key(tmp_path / "a")) as admin:
            created = admin.create_key("bot", ["agent"], tenant=ME)
            b.run(b.app.keys.refresh_if_changed())  # what b's poller does (it may have been told already)
            with (
                CapregClient(a.target, api_key=created.token) as on_a,
                CapregClient(b.target, api_key=created.token) as on_b,
            ):
                on_a.list_agents()
                on_b.list_agents()
                admin.revoke_key(created.key.id)
                assert _code(on_a.list_agents) == UNAUTHENTICATED
                b.run(b.app.keys.refresh_if_changed())
                assert _code(on_b.list_agents) == UNAUTHENTICATED
                assert not b.run(b.app.keys.refresh_if_changed())  # b is up to date


# -- audit ----------------------------------------------------------------------------------------------


def test_every_change_is_audited_with_who_what_and_when(
    database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    data = tmp_path / "data"
    with running_server(data, database_url, embedder, auth_enabled=True) as server:
        with CapregClient(server.target, api_key=_operator_key(data)) as admin:
            acme = admin.create_key("acme-admin", ["operator"], tenant=ME)
            globex = admin.create_key("globex-admin", ["operator"], tenant=OTHER)
        started = datetime.now(UTC) - timedelta(seconds=5)
        with (
            CapregClient(server.target, api_key=acme.token) as acme_op,
            CapregClient(server.target, api_key=globex.token) as globex_op,
            CapregClient(server.target, api_key=_operator_key(data)) as admin,
        ):
            acme_op.register_agent(make_agent("audited-agent"))
            acme_op.create_policy(policy("", "audited-policy"))
            acme_op.create_budget("audited-budget", 5)
            bot = acme_op.create_key("audited-key", ["agent"])
            acme_op.revoke_key(bot.key.id)
            globex_op.register_agent(make_agent("globex-agent"))
            assert _code(lambda: acme_op.create_budget("nope", 5, tenant=OTHER)) == DENIED  # refused: not audited
            # A cluster operator's change by id alone is filed under the tenant it changed.
            stray = admin.create_key("stray", ["agent"], tenant=ME)
            admin.revoke_key(stray.key.id)

            entries = acme_op.list_audit()
            assert entries and {e.tenant for e in entries} == {ME}
            actor = f"acme-admin ({acme.key.id})"
            mine = [(e.actor, e.action, e.entity, e.entity_id) for e in entries if e.actor == actor]
            assert mine[::-1] == [
                (actor, "RegisterAgent", "agent", "audited-agent"),
                (actor, "CreatePolicy", "policy", "audited-policy"),
                (actor, "CreateBudget", "budget", "audited-budget"),
                (actor, "CreateKey", "api_key", bot.key.id),
                (actor, "RevokeKey", "api_key", bot.key.id),
            ]
            now = datetime.now(UTC) + timedelta(seconds=5)
            assert all(started <= e.time.ToDatetime(tzinfo=UTC) <= now for e in entries)
            create_key = next(e for e in entries if e.action == "CreateKey" and e.entity_id == bot.key.id)
            assert json.loads(create_key.details_json)["name"] == "audited-key"
            assert "token" not in json.loads(create_key.details_json)
            secret = bot.token.split("_", 2)[2]
            assert not [e for e in admin.list_audit(limit=1000) if secret in e.details_json]
            assert not [e for e in entries if "nope" in e.details_json]
            cluster = [(e.action, e.entity_id) for e in entries if e.actor.startswith("bootstrap-operator (")]
            assert ("RevokeKey", stray.key.id) in cluster and ("CreateKey", stray.key.id) in cluster

            # A tenant operator reads its own tenant's log only; the cluster operator reads every tenant's.
            assert {e.tenant for e in globex_op.list_audit()} == {OTHER}
            assert _code(lambda: acme_op.list_audit(OTHER)) == DENIED
            assert {e.tenant for e in admin.list_audit(limit=1000)} >= {ME, OTHER}
            assert [e.tenant for e in admin.list_audit(ME, limit=2)] == [ME, ME]
            with CapregClient(server.target, api_key=bot.token) as revoked:
                assert _code(revoked.list_audit) == UNAUTHENTICATED
            orchestrator = acme_op.create_key("orchestrator", ["orchestrator"]).token
            with CapregClient(server.target, api_key=orchestrator) as orch:
                assert _code(orch.list_audit) == DENIED

            # A bulk registration is audited once per tenant it wrote into, each with its own agents.
            admin.register_agents(
                [
                    make_agent("bulk-acme-1", tenant=ME),
                    make_agent("bulk-globex", tenant=OTHER),
                    make_agent("bulk-acme-2", tenant=ME),
                ]
            )
            [acme_row] = [e for e in acme_op.list_audit() if e.action == "RegisterAgents"]
            [globex_row] = [e for e in globex_op.list_audit() if e.action == "RegisterAgents"]
            assert acme_row.entity_id == "2 agents: bulk-acme-1, bulk-acme-2"
            assert [a["name"] for a in json.loads(acme_row.details_json)["agents"]] == ["bulk-acme-1", "bulk-acme-2"]
            assert globex_row.entity_id == "1 agents: bulk-globex" and "bulk-acme" not in globex_row.details_json
            # A tenant's key cannot slip another tenant's agent into its batch; nothing of the batch is written.
            writer = acme_op.create_key("bulk-writer", ["agent"]).token
            with CapregClient(server.target, api_key=writer) as bot_client:
                refused = _code(
                    lambda: bot_client.register_agents(
                        [make_agent("bulk-acme-3", tenant=ME), make_agent("bulk-intruder", tenant=OTHER)]
                    )
                )
                assert refused == DENIED
            stored = {a.name for tenant in (ME, OTHER) for a in admin.iter_agents(tenant=tenant)}
            assert "bulk-acme-1" in stored and not {"bulk-acme-3", "bulk-intruder"} & stored


# -- the command line -----------------------------------------------------------------------------------


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("90m") == timedelta(minutes=90)
    for bad in ("", "30", "d", "3x", "-1d", "1.5h", "0s"):
        with pytest.raises(Exception, match=r"duration|longer than zero"):
            parse_duration(bad)


def test_cli_keys_and_audit(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    data = tmp_path / "data"
    runner = CliRunner(env={"CAPREG_API_KEY": None, "CAPREG_API_KEY_FILE": None})
    with running_server(data, f"sqlite:///{tmp_path / 'capreg.db'}", embedder, auth_enabled=True) as server:
        common = ["--target", server.target, "--api-key", _operator_key(data)]

        def run(*args: str) -> Any:
            return runner.invoke(cli, [*args, *common], catch_exceptions=False)

        result = run("keys", "create", "acme-admin", "--role", "operator", "--tenant", ME, "--expires-in", "30d")
        assert result.exit_code == 0, result.output
        assert "shown only now" in result.stderr
        token = result.stdout.strip()
        assert token.startswith("capreg_") and "\n" not in token
        key_id = token.split("_")[1]
        with CapregClient(server.target, api_key=token) as acme_op:
            (key,) = [k for k in acme_op.list_keys() if k.id == key_id]
            expires = key.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
            assert timedelta(days=29, hours=23) < expires <= timedelta(days=30)

        result = run("keys", "create", "bot", "--role", "agent", "--role", "summarizers", "--tenant", ME, "--json")
        assert result.exit_code == 0, result.output
        created = json.loads(result.stdout)
        assert created["key"]["roles"] == ["agent", "summarizers"] and created["token"].startswith("capreg_")
        assert "expire_time" not in created["key"]

        result = run("keys", "list")
        assert result.exit_code == 0, result.output
        assert key_id in result.stdout and "acme-admin" in result.stdout and "bootstrap-operator" in result.stdout
        assert token.split("_", 2)[2] not in result.stdout
        listed = json.loads(run("keys", "list", "--tenant", ME, "--json").stdout)
        assert {k["name"] for k in listed} == {"acme-admin", "bot"}

        result = run("keys", "revoke", created["key"]["id"])
        assert result.exit_code == 0, result.output
        assert f"key {created['key']['id']} (acme/bot): revoked at" in result.stdout
        with CapregClient(server.target, api_key=created["token"]) as bot:
            assert _code(bot.list_agents) == UNAUTHENTICATED

        result = run("audit")
        assert result.exit_code == 0, result.output
        assert "CreateKey" in result.stdout and "RevokeKey" in result.stdout and "bootstrap-operator" in result.stdout
        entries = json.loads(run("audit", "--tenant", ME, "--limit", "1", "--json").stdout)
        assert [(e["tenant"], e["action"], e["entity_id"]) for e in entries] == [
            (ME, "RevokeKey", created["key"]["id"])
        ]
        assert "--before-id" in run("audit", "--limit", "1").stdout

        # What a tenant operator sees with its own key.
        tenant_view = runner.invoke(cli, ["audit", "--target", server.target, "--api-key", token, "--json"])
        assert {e["tenant"] for e in json.loads(tenant_view.stdout)} == {ME}

        # Errors say what to do.
        result = runner.invoke(cli, ["keys", "list", "--target", server.target])
        assert result.exit_code == 1 and "UNAUTHENTICATED" in result.output and "--api-key" in result.output
        result = run("keys", "create", "x", "--role", "agent", "--expires-in", "3x")
        assert result.exit_code == 2 and "not a duration" in result.output
        result = runner.invoke(cli, ["keys", "create", "x", "--role", "cluster-operator", "--target", server.target,
                                     "--api-key", token])  # fmt: skip
        assert result.exit_code == 1 and "PERMISSION_DENIED" in result.output


@pytest.mark.parametrize("command", [["keys"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"], ["audit"]])
def test_key_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output
