"""Thin servicers: proto -> domain, call the service, domain -> proto. Errors go to the interceptor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
from capreg.v1 import agent_pb2, discovery_pb2, discovery_pb2_grpc, registry_pb2, registry_pb2_grpc

from registry.domain.errors import FailedPrecondition, InvalidArgument
from registry.domain.models import AgentRef, DiscoverQuery, WriteResult
from registry.service.discovery_service import DiscoveryService
from registry.service.interop_service import ExportedDocument, ImportOptions, ImportResult, InteropService
from registry.service.registry_service import MAX_BATCH_AGENTS, RegistryService
from registry.service.watch import DiscoverWatches
from registry.transport import convert
from registry.transport.auth import current_identity, scoped_ref_tenant, scoped_tenant

Context = grpc.aio.ServicerContext[Any, Any]


def _scoped_ref(ref: agent_pb2.AgentRef) -> AgentRef:
    return AgentRef(id=ref.id, tenant=scoped_ref_tenant(ref.tenant, bool(ref.id), "agent.tenant"), name=ref.name)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, service: RegistryService, interop: InteropService | None = None):
        self._service = service
        self._interop = interop

    def _documents(self) -> InteropService:
        if self._interop is None:
            raise FailedPrecondition("this server does not import or export documents")
        return self._interop

    async def ImportAgentCard(
        self, request: registry_pb2.ImportAgentCardRequest, context: Context
    ) -> registry_pb2.ImportAgentResponse:
        tenant = scoped_tenant(request.tenant)
        result = await self._documents().import_card(tenant, request.card_json, _import_options(request.options))
        return _imported(result)

    async def ImportMcpServer(
        self, request: registry_pb2.ImportMcpServerRequest, context: Context
    ) -> registry_pb2.ImportAgentResponse:
        tenant = scoped_tenant(request.tenant)
        options = _import_options(request.options)
        result = await self._documents().import_mcp_server(tenant, request.server_json, request.tools_json, options)
        return _imported(result)

    async def ExportAgentCard(
        self, request: registry_pb2.ExportAgentCardRequest, context: Context
    ) -> registry_pb2.ExportDocumentResponse:
        exported = await self._documents().export_card(_scoped_ref(request.agent), request.format)
        return _exported(exported)

    async def ExportMcpServer(
        self, request: registry_pb2.ExportMcpServerRequest, context: Context
    ) -> registry_pb2.ExportDocumentResponse:
        return _exported(await self._documents().export_mcp_server(_scoped_ref(request.agent)))

    async def RegisterAgent(
        self, request: registry_pb2.RegisterAgentRequest, context: Context
    ) -> registry_pb2.RegisterAgentResponse:
        agent = convert.agent_from_proto(request.agent)
        agent = replace(agent, tenant=scoped_tenant(agent.tenant, "agent.tenant"))
        return _registered(await self._service.register(agent, request.expected_generation))

    async def RegisterAgents(
        self, request: registry_pb2.RegisterAgentsRequest, context: Context
    ) -> registry_pb2.RegisterAgentsResponse:
        if len(request.agents) > MAX_BATCH_AGENTS:  # before converting a thousand agents for nothing
            raise InvalidArgument(
                "agents", f"has {len(request.agents)} agents; send at most {MAX_BATCH_AGENTS} per call"
            )
        pairs = []
        for i, item in enumerate(request.agents):
            agent = convert.agent_from_proto(item.agent, f"agents[{i}].agent")
            agent = replace(agent, tenant=scoped_tenant(agent.tenant, f"agents[{i}].agent.tenant"))
            pairs.append((agent, item.expected_generation))
        results = await self._service.register_many(pairs)
        return registry_pb2.RegisterAgentsResponse(
            results=[_registered(result) for result in results],
            consistency_token=max(result.token for result in results),
        )

    async def GetAgent(self, request: registry_pb2.GetAgentRequest, context: Context) -> registry_pb2.GetAgentResponse:
        agent = await self._service.get(_scoped_ref(request.agent))
        return registry_pb2.GetAgentResponse(agent=convert.agent_to_proto(agent))

    async def ListAgents(
        self, request: registry_pb2.ListAgentsRequest, context: Context
    ) -> registry_pb2.ListAgentsResponse:
        request.tenant = scoped_tenant(request.tenant)
        agents, token = await self._service.list(convert.list_query_from_proto(request))
        return registry_pb2.ListAgentsResponse(
            agents=[convert.agent_to_proto(a) for a in agents], next_page_token=token
        )

    async def UpdateAgentStatus(
        self, request: registry_pb2.UpdateAgentStatusRequest, context: Context
    ) -> registry_pb2.UpdateAgentStatusResponse:
        status = convert.status_from_proto(request.status, "status")
        assert status is not None
        result = await self._service.update_status(_scoped_ref(request.agent), status, request.expected_generation)
        assert result.agent is not None
        return registry_pb2.UpdateAgentStatusResponse(
            agent=convert.agent_to_proto(result.agent), consistency_token=result.token
        )

    async def DeregisterAgent(
        self, request: registry_pb2.DeregisterAgentRequest, context: Context
    ) -> registry_pb2.DeregisterAgentResponse:
        result = await self._service.deregister(_scoped_ref(request.agent), request.expected_generation)
        return registry_pb2.DeregisterAgentResponse(consistency_token=result.seq)

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        return await self._renew(request)

    async def KeepAlive(
        self, request_iterator: AsyncIterator[registry_pb2.HeartbeatRequest], context: Context
    ) -> AsyncIterator[registry_pb2.HeartbeatResponse]:
        """Renew on each message and every third of the TTL until the caller closes the stream."""
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            return
        answer = await self._renew(first)
        yield answer
        ref = first.agent
        pending: asyncio.Future[registry_pb2.HeartbeatRequest | None] = asyncio.ensure_future(anext(requests, None))
        try:
            while True:
                interval = max(convert.seconds(answer.lease_ttl) / 3, 0.1)
                done, _ = await asyncio.wait({pending}, timeout=interval)
                request = registry_pb2.HeartbeatRequest(agent=ref)
                if done:
                    message = pending.result()
                    if message is None:  # the caller closed the stream: stop renewing
                        return
                    if message.HasField("agent") and message.agent != ref:
                        raise InvalidArgument(
                            "agent", "a KeepAlive stream renews one agent: the one its first message named"
                        )
                    request.MergeFrom(message)
                    pending = asyncio.ensure_future(anext(requests, None))
                answer = await self._renew(request)
                yield answer
        finally:
            pending.cancel()

    async def _renew(self, request: registry_pb2.HeartbeatRequest) -> registry_pb2.HeartbeatResponse:
        ttl = convert.seconds(request.lease_ttl) if request.HasField("lease_ttl") else None
        agent, seq = await self._service.heartbeat(_scoped_ref(request.agent), ttl)
        return registry_pb2.HeartbeatResponse(
            lease_expire_time=convert.timestamp(agent.lease_expires_at),
            lease_ttl=convert.duration(agent.lease_ttl_s or 0.0),
            consistency_token=seq,
        )


class DiscoveryServicer(discovery_pb2_grpc.DiscoveryServiceServicer):
    def __init__(self, service: DiscoveryService, watches: DiscoverWatches | None = None):
        self._service = service
        self._watches = watches
        self._capabilities = convert.CapabilityProtoCache()

    async def Discover(
        self, request: discovery_pb2.DiscoverRequest, context: Context
    ) -> discovery_pb2.DiscoverResponse:
        result = await self._service.discover(_caller_query(request))
        return convert.discover_result_to_proto(result, self._capabilities)

    async def WatchDiscover(
        self, request: discovery_pb2.WatchDiscoverRequest, context: Context
    ) -> AsyncIterator[discovery_pb2.WatchDiscoverResponse]:
        if self._watches is None:
            raise FailedPrecondition("this server runs no change follower, so it cannot watch")
        updates = self._watches.watch(
            _caller_query(request.discover),
            last_digest=request.last_answer_digest,
            coalesce_ms=request.coalesce_ms,
        )
        async for update in updates:
            yield discovery_pb2.WatchDiscoverResponse(
                answer=convert.discover_result_to_proto(update.result, self._capabilities),
                answer_digest=update.digest,
                reasons=update.reasons,
            )


def _caller_query(request: discovery_pb2.DiscoverRequest) -> DiscoverQuery:
    """The request as a query, in the caller's tenant, with who is asking (for policies)."""
    identity = current_identity()
    query = convert.discover_query_from_proto(request)
    return replace(query, tenant=scoped_tenant(query.tenant), principal=identity.name, roles=identity.roles)


def _import_options(options: registry_pb2.ImportOptions) -> ImportOptions:
    return ImportOptions(
        visibility=convert.visibility_from_proto(options.visibility, "options.visibility"),
        shared_with=tuple(options.shared_with),
        lease_ttl_s=convert.seconds(options.lease_ttl) if options.HasField("lease_ttl") else None,
        labels=dict(options.labels),
    )


def _imported(result: ImportResult) -> registry_pb2.ImportAgentResponse:
    write = result.write
    assert write.agent is not None
    return registry_pb2.ImportAgentResponse(
        agent=convert.agent_to_proto(write.agent),
        created=write.created,
        changed=write.changed,
        added=result.added,
        updated=result.updated,
        removed=result.removed,
        consistency_token=write.token,
        format=result.format,
    )


def _exported(exported: ExportedDocument) -> registry_pb2.ExportDocumentResponse:
    return registry_pb2.ExportDocumentResponse(
        document_json=json.dumps(exported.document, indent=2, ensure_ascii=False), format=exported.format
    )


def _registered(result: WriteResult) -> registry_pb2.RegisterAgentResponse:
    assert result.agent is not None
    return registry_pb2.RegisterAgentResponse(
        agent=convert.agent_to_proto(result.agent),
        created=result.created,
        changed=result.changed,
        consistency_token=result.token,
    )
