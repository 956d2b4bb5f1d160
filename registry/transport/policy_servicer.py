"""PolicyService over gRPC."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import grpc
from capreg.v1 import policy_pb2, policy_pb2_grpc

from registry.domain.policy import Policy, PolicyEffect
from registry.service.policy_service import PolicyService
from registry.transport.auth import scoped_tenant
from registry.transport.convert_policy import EFFECT_TO_PROTO, effect_from_proto, policy_from_proto, policy_to_proto

Context = grpc.aio.ServicerContext[Any, Any]


def _scoped(policy: Policy) -> Policy:
    return replace(policy, tenant=scoped_tenant(policy.tenant, "policy.tenant"))


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, service: PolicyService):
        self._service = service

    async def CreatePolicy(
        self, request: policy_pb2.CreatePolicyRequest, context: Context
    ) -> policy_pb2.PolicyResponse:
        policy, seq = await self._service.create(_scoped(policy_from_proto(request.policy)))
        return policy_pb2.PolicyResponse(policy=policy_to_proto(policy), consistency_token=seq)

    async def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: Context
    ) -> policy_pb2.PolicyResponse:
        policy, seq = await self._service.update(
            _scoped(policy_from_proto(request.policy)), request.expected_generation
        )
        return policy_pb2.PolicyResponse(policy=policy_to_proto(policy), consistency_token=seq)

    async def GetPolicy(self, request: policy_pb2.GetPolicyRequest, context: Context) -> policy_pb2.PolicyResponse:
        ref = request.policy
        policy = await self._service.get(scoped_tenant(ref.tenant, "policy.tenant"), ref.name, ref.id)
        return policy_pb2.PolicyResponse(policy=policy_to_proto(policy))

    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: Context
    ) -> policy_pb2.ListPoliciesResponse:
        policies = await self._service.list_policies(scoped_tenant(request.tenant))
        return policy_pb2.ListPoliciesResponse(policies=[policy_to_proto(p) for p in policies])

    async def DeletePolicy(
        self, request: policy_pb2.DeletePolicyRequest, context: Context
    ) -> policy_pb2.DeletePolicyResponse:
        ref = request.policy
        seq = await self._service.delete(
            scoped_tenant(ref.tenant, "policy.tenant"), ref.name, ref.id, request.expected_generation
        )
        return policy_pb2.DeletePolicyResponse(consistency_token=seq)

    async def GetTenantSettings(
        self, request: policy_pb2.GetTenantSettingsRequest, context: Context
    ) -> policy_pb2.TenantSettings:
        tenant = scoped_tenant(request.tenant)
        effect = await self._service.default_effect(tenant)
        return policy_pb2.TenantSettings(tenant=tenant, default_effect=EFFECT_TO_PROTO[effect])

    async def UpdateTenantSettings(
        self, request: policy_pb2.UpdateTenantSettingsRequest, context: Context
    ) -> policy_pb2.TenantSettings:
        effect: PolicyEffect = effect_from_proto(request.settings.default_effect, "settings.default_effect")
        tenant = scoped_tenant(request.settings.tenant, "settings.tenant")
        seq = await self._service.set_default_effect(tenant, effect)
        return policy_pb2.TenantSettings(tenant=tenant, default_effect=EFFECT_TO_PROTO[effect], consistency_token=seq)
