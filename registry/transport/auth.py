"""Authentication and authorization of every RPC, in one place, plus the audit record of every write.

The interceptor turns the bearer token into an Identity, checks the RPC's roles, and makes the
identity available to the servicers (`current_identity()`), which scope every request to its tenant."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from capreg.v1 import registry_pb2
from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from registry.domain.auth import LOCAL, OPEN_PREFIXES, Identity, Unauthenticated, authorize
from registry.service.key_service import KeyService
from registry.transport.limits import RateLimiter

log = logging.getLogger(__name__)
_identity: ContextVar[Identity] = ContextVar("capreg_identity", default=LOCAL)
PRINCIPAL_HEADER = "x-capreg-principal"
ROLES_HEADER = "x-capreg-roles"

# Writes that are audited, and the request field (or, prefixed "response.", the answer's) that names what
# they change.
AUDITED: dict[str, tuple[str, str]] = {
    "/capreg.v1.RegistryService/RegisterAgent": ("agent", "agent.name"),
    "/capreg.v1.RegistryService/RegisterAgents": ("agent", "agents"),  # a row per tenant: see _audit
    "/capreg.v1.RegistryService/UpdateAgentStatus": ("agent", "agent"),
    "/capreg.v1.RegistryService/DeregisterAgent": ("agent", "agent"),
    "/capreg.v1.RegistryService/ImportAgentCard": ("agent", "response.agent.name"),
    "/capreg.v1.RegistryService/ImportMcpServer": ("agent", "response.agent.name"),
    "/capreg.v1.PolicyService/CreatePolicy": ("policy", "policy.name"),
    "/capreg.v1.PolicyService/UpdatePolicy": ("policy", "policy.name"),
    "/capreg.v1.PolicyService/DeletePolicy": ("policy", "policy"),
    "/capreg.v1.PolicyService/UpdateTenantSettings": ("tenant", "settings.tenant"),
    "/capreg.v1.BudgetService/CreateBudget": ("budget", "budget.name"),
    "/capreg.v1.BudgetService/UpdateBudget": ("budget", "budget"),
    "/capreg.v1.BudgetService/DeleteBudget": ("budget", "budget"),
    "/capreg.v1.KeyService/CreateKey": ("api_key", "response.key.id"),  # the id RevokeKey will name
    "/capreg.v1.KeyService/RevokeKey": ("api_key", "id"),
    "/capreg.v1.AdminService/CreateSpace": ("space", "name"),
    "/capreg.v1.AdminService/SetShadow": ("space", "name"),
    "/capreg.v1.AdminService/PromoteSpace": ("space", "name"),
    "/capreg.v1.AdminService/RollbackSpace": ("space", "response.name"),  # the space that serves again
    "/capreg.v1.AdminService/RetireSpace": ("space", "name"),
}
# Never copied into the audit log.
SECRET_FIELDS = {"token"}
MAX_AUDIT_TEXT = 4096  # characters of a request that JSON cannot represent


def current_identity() -> Identity:
    return _identity.get()


def scoped_tenant(requested: str, field: str = "tenant") -> str:
    """The tenant this call may act on (PERMISSION_DENIED for another tenant's, unless cluster operator)."""
    return _identity.get().tenant_for(requested, field)


def scoped_ref_tenant(requested: str, by_id: bool, field: str = "tenant") -> str:
    """For a lookup by id, a cluster operator who names no tenant looks in every tenant ("")."""
    identity = _identity.get()
    if by_id and identity.is_cluster_operator and not requested:
        return ""
    return identity.tenant_for(requested, field)


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("send the API key as `authorization: Bearer capreg_...`")
            return token.strip()
    return None


def header_identity(metadata: Any) -> Identity:
    """Without authentication (local development), trusted headers may name a principal and roles."""
    principal, roles = LOCAL.name, LOCAL.roles
    for key, value in metadata or ():
        if key == PRINCIPAL_HEADER and isinstance(value, str):
            principal = value[:128]
        elif key == ROLES_HEADER and isinstance(value, str):
            roles = frozenset(r.strip() for r in value.split(",")[:32] if r.strip()) | LOCAL.roles
    return Identity(key_id="", tenant=LOCAL.tenant, name=principal, roles=roles)


def _describe(request: Message, path: str) -> str:
    value: Any = request
    for part in path.split("."):
        value = getattr(value, part, "")
    if isinstance(value, Message):
        return "/".join(str(getattr(value, f)) for f in ("tenant", "name", "id") if getattr(value, f, ""))
    return str(value)


def _tenant_of(message: Message) -> str:
    """The `tenant` of a message, or of the first message field that has one."""
    tenant = getattr(message, "tenant", "")
    if isinstance(tenant, str) and tenant:
        return tenant
    for _, value in message.ListFields():
        inner = getattr(value, "tenant", "") if isinstance(value, Message) else ""
        if isinstance(inner, str) and inner:
            return inner
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """`keys` None means authentication is off: every caller is LOCAL (a cluster operator)."""

    def __init__(self, keys: KeyService | None, limiter: RateLimiter | None = None):
        self._keys = keys
        self._limiter = limiter

    def identify(self, metadata: Any) -> Identity:
        if self._keys is None:
            return header_identity(metadata)
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("this server needs an API key: send `authorization: Bearer capreg_...`")
        return self._keys.authenticate(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if handler.unary_unary is None:
            return self._streaming(handler, method, handler_call_details.invocation_metadata)
        inner = handler.unary_unary
        metadata = handler_call_details.invocation_metadata
        audited = AUDITED.get(method)

        async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            identity = self._admit(metadata, method)
            token = _identity.set(identity)
            try:
                response = await inner(request, context)  # type: ignore[arg-type]  # stubs predate aio
            finally:
                _identity.reset(token)
            if audited is not None and self._keys is not None:
                await self._audit(identity, method, audited, request, response)
            return response

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _admit(self, metadata: Any, method: str) -> Identity:
        identity = self.identify(metadata)
        authorize(identity, method)
        if self._limiter is not None and identity.key_id:
            self._limiter.take(identity.key_id)
        return identity

    def _streaming(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str, metadata: Any
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A streaming RPC is admitted once, when it opens; its messages are not audited (heartbeats)."""
        inner: Any = handler.unary_stream or handler.stream_stream
        if inner is not None:

            async def streamed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                token = _identity.set(self._admit(metadata, method))
                try:
                    async for response in inner(request, context):
                        yield response
                finally:
                    # A stream cancelled while blocked in a write is closed by the event loop's finaliser in
                    # another context, where the token is foreign; that context dies with it anyway.
                    with contextlib.suppress(ValueError):
                        _identity.reset(token)

            kind = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream is not None
                else grpc.stream_stream_rpc_method_handler
            )
            return kind(
                streamed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        unary_inner: Any = handler.stream_unary

        async def gathered(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = _identity.set(self._admit(metadata, method))
            try:
                return await unary_inner(request, context)
            finally:
                _identity.reset(token)

        return grpc.stream_unary_rpc_method_handler(
            gathered, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    async def _audit(
        self, identity: Identity, method: str, audited: tuple[str, str], request: Message, response: Message
    ) -> None:
        assert self._keys is not None
        entity, path = audited
        action = method.rsplit("/", 2)[-1]
        if isinstance(response, registry_pb2.RegisterAgentsResponse):
            # One row per tenant the batch wrote into, so each tenant's operators see their own agents.
            by_tenant: dict[str, list[registry_pb2.RegisterAgentResponse]] = {}
            for result in response.results:
                by_tenant.setdefault(result.agent.tenant, []).append(result)
            for tenant, results in by_tenant.items():
                names = [r.agent.name for r in results]
                summary: dict[str, Any] = {"agents": [_agent_summary(r) for r in results]}
                await self._write_audit(
                    identity, tenant, action, entity, f"{len(names)} agents: {', '.join(names)}", summary
                )
            return
        try:
            details: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=True)
        except json_format.Error:  # e.g. an out-of-range Timestamp in an output-only field, which was ignored
            details = {"request": text_format.MessageToString(request, as_one_line=True)[:MAX_AUDIT_TEXT]}
        for field in SECRET_FIELDS:
            details.pop(field, None)
        tenant = identity.tenant
        if identity.is_cluster_operator:
            # The tenant changed: the answer's (a change by id alone names none), else the request's.
            tenant = _tenant_of(response) or _tenant_of(request) or "default"
        source = response if path.startswith("response.") else request
        await self._write_audit(
            identity, tenant, action, entity, _describe(source, path.removeprefix("response.")), details
        )

    async def _write_audit(
        self, identity: Identity, tenant: str, action: str, entity: str, entity_id: str, details: dict[str, Any]
    ) -> None:
        assert self._keys is not None
        try:
            await self._keys.audit(identity, tenant, action, entity, entity_id, details)
        except Exception:  # the change is committed; losing its audit row is logged loudly, not hidden
            log.exception("could not write the audit record of %s by %s", action, identity.actor)


def _agent_summary(result: registry_pb2.RegisterAgentResponse) -> dict[str, Any]:
    """What a bulk registration's audit keeps of each agent (the whole request, vectors included, could be
    megabytes)."""
    agent = result.agent
    return {
        "name": agent.name,
        "id": agent.id,
        "endpoint": agent.endpoint,
        "capabilities": [f"{cap.name}@{cap.version}" for cap in agent.capabilities],
        "generation": agent.generation,
        "created": result.created,
        "changed": result.changed,
    }
