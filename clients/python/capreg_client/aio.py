"""asyncio client, with the same methods as CapregClient."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from capreg.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    budget_pb2,
    budget_pb2_grpc,
    discovery_pb2,
    discovery_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    outcome_pb2,
    outcome_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from capreg_client import budget_requests, requests
from capreg_client.errors import from_rpc_error

T = TypeVar("T")


class AsyncCapregClient:
    """A non-blocking client over one grpc.aio channel; use `async with`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 10.0,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        channel: grpc.aio.Channel | None = None,
    ):
        self.target = target
        self.timeout = timeout
        # Sent with every call; an insecure channel cannot carry call credentials, so this is metadata.
        self._auth: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        if channel is None and (tls or root_certificates or certificate_chain):
            # TLS (with a client certificate for mTLS); root_certificates None means the system's roots.
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            channel = grpc.aio.secure_channel(target, credentials)
        self._channel = channel or grpc.aio.insecure_channel(target)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._discovery = discovery_pb2_grpc.DiscoveryServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._policies = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self._keys = keys_pb2_grpc.KeyServiceStub(self._channel)
        self._audit = keys_pb2_grpc.AuditServiceStub(self._channel)
        self._budgets = budget_pb2_grpc.BudgetServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._outcomes = outcome_pb2_grpc.OutcomeServiceStub(self._channel)

    async def __aenter__(self) -> AsyncCapregClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(
        self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None, metadata: Any = None
    ) -> T:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._auth + tuple(metadata or ()))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def register_agent(
        self, agent: agent_pb2.Agent, *, expected_generation: int = 0, timeout: float | None = None
    ) -> registry_pb2.RegisterAgentResponse:
        request = registry_pb2.RegisterAgentRequest(agent=agent, expected_generation=expected_generation)
        return await self._call(self._registry.RegisterAgent, request, timeout)

    async def register_agents(
        self,
        agents: Sequence[agent_pb2.Agent | registry_pb2.RegisterAgentRequest],
        *,
        timeout: float | None = None,
    ) -> registry_pb2.RegisterAgentsResponse:
        """Register up to 1,000 agents in one call and one transaction (all or none): the bulk path. Give
        agents, or RegisterAgentRequests to set an expected generation per agent."""
        request = registry_pb2.RegisterAgentsRequest(
            agents=[
                item
                if isinstance(item, registry_pb2.RegisterAgentRequest)
                else registry_pb2.RegisterAgentRequest(agent=item)
                for item in agents
            ]
        )
        return await self._call(self._registry.RegisterAgents, request, timeout)

    async def import_agent_card(
        self,
        card: str | Mapping[str, Any],
        *,
        tenant: str = "",
        visibility: str = "",
        shared_with: Sequence[str] = (),
        lease_ttl_s: float | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> registry_pb2.ImportAgentResponse:
        """Register the agent an A2A Agent Card (JSON text or parsed) describes; one capability per skill."""
        request = registry_pb2.ImportAgentCardRequest(
            tenant=tenant,
            card_json=requests.document_text(card),
            options=requests.import_options(visibility, shared_with, lease_ttl_s, labels),
        )
        return await self._call(self._registry.ImportAgentCard, request, timeout)

    async def import_mcp_server(
        self,
        server: str | Mapping[str, Any],
        *,
        tools: str | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        tenant: str = "",
        visibility: str = "",
        shared_with: Sequence[str] = (),
        lease_ttl_s: float | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> registry_pb2.ImportAgentResponse:
        """Register the tool agent an MCP server.json describes; `tools`: a tools/list result or its array."""
        request = registry_pb2.ImportMcpServerRequest(
            tenant=tenant,
            server_json=requests.document_text(server),
            tools_json="" if tools is None else tools if isinstance(tools, str) else json.dumps(tools),
            options=requests.import_options(visibility, shared_with, lease_ttl_s, labels),
        )
        return await self._call(self._registry.ImportMcpServer, request, timeout)

    async def export_agent_card(
        self, name: str = "", *, tenant: str = "", id: str = "", format: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        """The agent's A2A Agent Card ("a2a-0.3" or "a2a-1.0"; empty: the format it was imported in)."""
        request = registry_pb2.ExportAgentCardRequest(agent=requests.agent_ref(id, tenant, name), format=format)
        answer = await self._call(self._registry.ExportAgentCard, request, timeout)
        return json.loads(answer.document_json)  # type: ignore[no-any-return]

    async def export_mcp_server(
        self, name: str = "", *, tenant: str = "", id: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        """The agent's MCP server.json."""
        request = registry_pb2.ExportMcpServerRequest(agent=requests.agent_ref(id, tenant, name))
        answer = await self._call(self._registry.ExportMcpServer, request, timeout)
        return json.loads(answer.document_json)  # type: ignore[no-any-return]

    async def get_agent(
        self, name: str = "", *, tenant: str = "", id: str = "", timeout: float | None = None
    ) -> agent_pb2.Agent:
        request = registry_pb2.GetAgentRequest(agent=requests.agent_ref(id, tenant, name))
        return (await self._call(self._registry.GetAgent, request, timeout)).agent

    async def list_agents(self, *, timeout: float | None = None, **filters: Any) -> registry_pb2.ListAgentsResponse:
        return await self._call(self._registry.ListAgents, requests.list_agents(**filters), timeout)

    async def iter_agents(self, *, timeout: float | None = None, **filters: Any) -> AsyncIterator[agent_pb2.Agent]:
        token = ""
        while True:
            page = await self.list_agents(timeout=timeout, page_token=token, **filters)
            for agent in page.agents:
                yield agent
            token = page.next_page_token
            if not token:
                return

    async def update_agent_status(
        self,
        name: str = "",
        status: str | int = "active",
        *,
        tenant: str = "",
        id: str = "",
        expected_generation: int = 0,
        timeout: float | None = None,
    ) -> registry_pb2.UpdateAgentStatusResponse:
        request = registry_pb2.UpdateAgentStatusRequest(
            agent=requests.agent_ref(id, tenant, name),
            status=requests.status_value(status),
            expected_generation=expected_generation,
        )
        return await self._call(self._registry.UpdateAgentStatus, request, timeout)

    async def deregister_agent(
        self,
        name: str = "",
        *,
        tenant: str = "",
        id: str = "",
        expected_generation: int = 0,
        timeout: float | None = None,
    ) -> registry_pb2.DeregisterAgentResponse:
        request = registry_pb2.DeregisterAgentRequest(
            agent=requests.agent_ref(id, tenant, name), expected_generation=expected_generation
        )
        return await self._call(self._registry.DeregisterAgent, request, timeout)

    async def heartbeat(
        self,
        name: str = "",
        *,
        tenant: str = "",
        id: str = "",
        lease_ttl_s: float | None = None,
        timeout: float | None = None,
    ) -> registry_pb2.HeartbeatResponse:
        """Renew the agent's lease (for lease_ttl_s from now when given, else its stored TTL)."""
        request = requests.heartbeat(id, tenant, name, lease_ttl_s)
        return await self._call(self._registry.Heartbeat, request, timeout)

    async def discover(
        self,
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
        principal: str = "",
        roles: Sequence[str] = (),
        min_seq: int = 0,
        cost_preference: float | None = None,
        latency_preference: float | None = None,
        exploration_rate: float | None = None,
        timeout: float | None = None,
    ) -> discovery_pb2.DiscoverResponse:
        """`principal` and `roles` say who is asking, for policies (sent as metadata). `min_seq`: a write's
        consistency token, to read that write on any replica."""
        request = requests.discover(
            text,
            vector=vector,
            space=space,
            top_k=top_k,
            tenant=tenant,
            filters=filters,
            estimated_input_tokens=estimated_input_tokens,
            estimated_output_tokens=estimated_output_tokens,
            task_labels=task_labels,
            budget_id=budget_id,
            min_seq=min_seq,
            cost_preference=cost_preference,
            latency_preference=latency_preference,
            exploration_rate=exploration_rate,
        )
        return await self._call(
            self._discovery.Discover, request, timeout, metadata=requests.caller_metadata(principal, roles)
        )

    async def report_outcome(
        self,
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
        timeout: float | None = None,
    ) -> outcome_pb2.ReportOutcomeResponse:
        """How `capability_id` did on a task (a Discover's discover_id, its text, or its vector): success, or
        a score in [0, 1]. Later Discovers of this tenant in the same space learn from it."""
        request = requests.report_outcome(
            capability_id,
            success=success,
            score=score,
            discover_id=discover_id,
            text=text,
            vector=vector,
            space=space,
            tenant=tenant,
            latency_ms=latency_ms,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
        )
        return await self._call(self._outcomes.ReportOutcome, request, timeout)

    async def discover_request(
        self, request: discovery_pb2.DiscoverRequest, *, timeout: float | None = None
    ) -> discovery_pb2.DiscoverResponse:
        return await self._call(self._discovery.Discover, request, timeout)

    async def watch_discover(
        self,
        request: discovery_pb2.DiscoverRequest,
        *,
        last_answer_digest: str = "",
        coalesce_ms: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[discovery_pb2.WatchDiscoverResponse]:
        """The answer to `request`, then each new answer as it changes (see CapregClient.watch_discover)."""
        call = self._discovery.WatchDiscover(
            discovery_pb2.WatchDiscoverRequest(
                discover=request, last_answer_digest=last_answer_digest, coalesce_ms=coalesce_ms
            ),
            metadata=self._auth,
            timeout=timeout,
        )
        try:
            async for answer in call:
                yield answer
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def index_status(self, *, timeout: float | None = None) -> admin_pb2.IndexStatus:
        """How this server's index stands: watermark, log head, digest, start-up, last snapshot."""
        return await self._call(self._admin.GetIndexStatus, admin_pb2.GetIndexStatusRequest(), timeout)

    # -- vector spaces (cluster operators) ------------------------------------------------------------

    async def create_space(
        self, name: str, model: str, template: str, *, timeout: float | None = None
    ) -> admin_pb2.Space:
        request = admin_pb2.CreateSpaceRequest(name=name, model=model, template=template)
        return await self._call(self._admin.CreateSpace, request, timeout)

    async def get_space(self, name: str, *, timeout: float | None = None) -> admin_pb2.Space:
        return await self._call(self._admin.GetSpace, admin_pb2.GetSpaceRequest(name=name), timeout)

    async def list_spaces(self, *, timeout: float | None = None) -> list[admin_pb2.Space]:
        return list((await self._call(self._admin.ListSpaces, admin_pb2.ListSpacesRequest(), timeout)).spaces)

    async def compare_spaces(
        self, request: admin_pb2.CompareSpacesRequest, *, timeout: float | None = None
    ) -> admin_pb2.CompareSpacesResponse:
        return await self._call(self._admin.CompareSpaces, request, timeout)

    async def set_shadow(self, name: str, fraction: float, *, timeout: float | None = None) -> admin_pb2.Space:
        request = admin_pb2.SetShadowRequest(name=name, fraction=fraction)
        return await self._call(self._admin.SetShadow, request, timeout)

    async def promote_space(self, name: str, *, timeout: float | None = None) -> admin_pb2.Space:
        return await self._call(self._admin.PromoteSpace, admin_pb2.PromoteSpaceRequest(name=name), timeout)

    async def rollback_space(self, *, timeout: float | None = None) -> admin_pb2.Space:
        return await self._call(self._admin.RollbackSpace, admin_pb2.RollbackSpaceRequest(), timeout)

    async def retire_space(self, name: str, *, timeout: float | None = None) -> admin_pb2.Space:
        return await self._call(self._admin.RetireSpace, admin_pb2.RetireSpaceRequest(name=name), timeout)

    # -- policies ------------------------------------------------------------------------------------

    async def create_policy(
        self, policy: policy_pb2.Policy, *, timeout: float | None = None
    ) -> policy_pb2.PolicyResponse:
        return await self._call(self._policies.CreatePolicy, policy_pb2.CreatePolicyRequest(policy=policy), timeout)

    async def update_policy(
        self, policy: policy_pb2.Policy, *, expected_generation: int = 0, timeout: float | None = None
    ) -> policy_pb2.PolicyResponse:
        request = policy_pb2.UpdatePolicyRequest(policy=policy, expected_generation=expected_generation)
        return await self._call(self._policies.UpdatePolicy, request, timeout)

    async def get_policy(
        self, name: str = "", *, tenant: str = "", id: str = "", timeout: float | None = None
    ) -> policy_pb2.Policy:
        request = policy_pb2.GetPolicyRequest(policy=policy_pb2.PolicyRef(id=id, tenant=tenant, name=name))
        return (await self._call(self._policies.GetPolicy, request, timeout)).policy

    async def list_policies(self, tenant: str = "", *, timeout: float | None = None) -> list[policy_pb2.Policy]:
        request = policy_pb2.ListPoliciesRequest(tenant=tenant)
        return list((await self._call(self._policies.ListPolicies, request, timeout)).policies)

    async def delete_policy(
        self,
        name: str = "",
        *,
        tenant: str = "",
        id: str = "",
        expected_generation: int = 0,
        timeout: float | None = None,
    ) -> policy_pb2.DeletePolicyResponse:
        request = policy_pb2.DeletePolicyRequest(
            policy=policy_pb2.PolicyRef(id=id, tenant=tenant, name=name), expected_generation=expected_generation
        )
        return await self._call(self._policies.DeletePolicy, request, timeout)

    async def get_tenant_settings(self, tenant: str = "", *, timeout: float | None = None) -> policy_pb2.TenantSettings:
        request = policy_pb2.GetTenantSettingsRequest(tenant=tenant)
        return await self._call(self._policies.GetTenantSettings, request, timeout)

    async def set_default_effect(
        self, effect: str | int, *, tenant: str = "", timeout: float | None = None
    ) -> policy_pb2.TenantSettings:
        """What applies to a tenant's callers when no policy allows or denies: "allow" or "deny"."""
        settings = policy_pb2.TenantSettings(tenant=tenant, default_effect=requests.effect_value(effect))
        return await self._call(
            self._policies.UpdateTenantSettings, policy_pb2.UpdateTenantSettingsRequest(settings=settings), timeout
        )

    # -- budgets (BudgetService) ---------------------------------------------------------------------

    async def create_budget(
        self,
        name: str,
        limit_usd: float,
        *,
        period: str | int = "month",
        scope: str | int = "tenant",
        scope_id: str = "",
        tenant: str = "",
        timeout: float | None = None,
    ) -> budget_pb2.BudgetResponse:
        """A budget of `limit_usd` per period ("day", "month" or "total") for the tenant, a principal or a
        project (`scope`, with `scope_id` naming the principal or project)."""
        request = budget_requests.create_budget(
            name, limit_usd, period=period, scope=scope, scope_id=scope_id, tenant=tenant
        )
        return await self._call(self._budgets.CreateBudget, request, timeout)

    async def get_budget(
        self, name: str = "", *, tenant: str = "", id: str = "", timeout: float | None = None
    ) -> budget_pb2.Budget:
        """A budget with its current period's usage (committed, reserved, remaining)."""
        request = budget_pb2.GetBudgetRequest(budget=budget_requests.budget_ref(id, tenant, name))
        return (await self._call(self._budgets.GetBudget, request, timeout)).budget

    async def list_budgets(self, *, tenant: str = "", timeout: float | None = None) -> list[budget_pb2.Budget]:
        request = budget_pb2.ListBudgetsRequest(tenant=tenant)
        return list((await self._call(self._budgets.ListBudgets, request, timeout)).budgets)

    async def update_budget(
        self,
        limit_usd: float,
        name: str = "",
        *,
        tenant: str = "",
        id: str = "",
        expected_generation: int = 0,
        timeout: float | None = None,
    ) -> budget_pb2.BudgetResponse:
        """Change a budget's limit."""
        request = budget_pb2.UpdateBudgetRequest(
            budget=budget_requests.budget_ref(id, tenant, name),
            limit_usd=limit_usd,
            expected_generation=expected_generation,
        )
        return await self._call(self._budgets.UpdateBudget, request, timeout)

    async def delete_budget(
        self,
        name: str = "",
        *,
        tenant: str = "",
        id: str = "",
        expected_generation: int = 0,
        timeout: float | None = None,
    ) -> budget_pb2.DeleteBudgetResponse:
        request = budget_pb2.DeleteBudgetRequest(
            budget=budget_requests.budget_ref(id, tenant, name), expected_generation=expected_generation
        )
        return await self._call(self._budgets.DeleteBudget, request, timeout)

    async def reserve(
        self,
        budget_id: str,
        amount_usd: float,
        *,
        ttl_s: float | None = None,
        tenant: str = "",
        timeout: float | None = None,
    ) -> budget_pb2.ReservationResponse:
        """Hold `amount_usd` for `ttl_s` seconds (300 when None); FailedPrecondition (a CapregError with
        code FAILED_PRECONDITION) when it does not fit in what the budget has left."""
        request = budget_requests.reserve(budget_id, amount_usd, ttl_s=ttl_s, tenant=tenant)
        return await self._call(self._budgets.Reserve, request, timeout)

    async def commit(
        self,
        reservation_id: str,
        actual_usd: float | None = None,
        *,
        tenant: str = "",
        timeout: float | None = None,
    ) -> budget_pb2.ReservationResponse:
        """Settle a reservation with what was spent (the held amount when None)."""
        request = budget_requests.commit(reservation_id, actual_usd, tenant=tenant)
        return await self._call(self._budgets.Commit, request, timeout)

    async def release(
        self, reservation_id: str, *, tenant: str = "", timeout: float | None = None
    ) -> budget_pb2.ReservationResponse:
        request = budget_pb2.ReleaseRequest(tenant=tenant, reservation_id=reservation_id)
        return await self._call(self._budgets.Release, request, timeout)

    async def get_reservation(
        self, reservation_id: str, *, tenant: str = "", timeout: float | None = None
    ) -> budget_pb2.Reservation:
        request = budget_pb2.GetReservationRequest(tenant=tenant, reservation_id=reservation_id)
        return (await self._call(self._budgets.GetReservation, request, timeout)).reservation

    # -- keys and audit ------------------------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        roles: Sequence[str],
        *,
        tenant: str = "",
        expire_time: Any = None,
        timeout: float | None = None,
    ) -> keys_pb2.CreateKeyResponse:
        """A new API key; `response.token` is the secret, shown this once."""
        request = keys_pb2.CreateKeyRequest(tenant=tenant, name=name, roles=list(roles), expire_time=expire_time)
        return await self._call(self._keys.CreateKey, request, timeout)

    async def list_keys(self, tenant: str = "", *, timeout: float | None = None) -> list[keys_pb2.ApiKey]:
        return list((await self._call(self._keys.ListKeys, keys_pb2.ListKeysRequest(tenant=tenant), timeout)).keys)

    async def revoke_key(self, key_id: str, *, timeout: float | None = None) -> keys_pb2.ApiKey:
        return (await self._call(self._keys.RevokeKey, keys_pb2.RevokeKeyRequest(id=key_id), timeout)).key

    async def list_audit(
        self, tenant: str = "", *, limit: int = 0, before_id: int = 0, timeout: float | None = None
    ) -> list[keys_pb2.AuditEntry]:
        request = keys_pb2.ListAuditRequest(tenant=tenant, limit=limit, before_id=before_id)
        return list((await self._call(self._audit.ListAudit, request, timeout)).entries)
