"""Policy CRUD, and the in-memory rule book every Discover reads.

The book is replaced whole on every change this process makes, and re-read when the change-log
follower reaches a policy change made elsewhere, so a change takes effect on the next Discover here
and as soon as each replica's follower reads it everywhere else."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from registry.domain import validation as v
from registry.domain.errors import InvalidArgument
from registry.domain.models import AgentKind
from registry.domain.policy import LabelOperator, LabelRequirement, Policy, PolicyEffect, TenantPolicies
from registry.store.policies import PolicyStore

log = logging.getLogger(__name__)
MAX_POLICIES_PER_TENANT = 256
MAX_REQUIREMENTS = 32


class PolicyService:
    def __init__(self, store: PolicyStore):
        self._store = store
        self._book: dict[str, TenantPolicies] = {}
        self._seq = -1
        self._lock = asyncio.Lock()
        self._loaded = asyncio.Condition()

    def rules_for(self, tenant: str) -> TenantPolicies:
        """The hot path: a dictionary lookup."""
        return self._book.get(tenant) or TenantPolicies()

    async def load(self) -> None:
        seq, book = await asyncio.to_thread(self._store.snapshot)
        async with self._lock:
            if seq >= self._seq:
                self._book, self._seq = book, seq
        async with self._loaded:
            self._loaded.notify_all()

    async def wait_until(self, seq: int) -> None:
        """Until the rule book reflects change `seq` (a write's consistency token)."""
        async with self._loaded:
            await self._loaded.wait_for(lambda: self._seq >= seq)

    async def refresh_if_changed(self) -> bool:
        """Reload when the change log has a policy change newer than the book."""
        if await asyncio.to_thread(self._store.last_seq) > self._seq:
            await self.load()
            return True
        return False

    # -- CRUD ----------------------------------------------------------------------------------------

    async def create(self, policy: Policy) -> tuple[Policy, int]:
        policy = validate_policy(policy)
        if len(self.rules_for(policy.tenant).policies) >= MAX_POLICIES_PER_TENANT:
            raise InvalidArgument("policy.tenant", f"a tenant may have at most {MAX_POLICIES_PER_TENANT} policies")
        created, seq = await asyncio.to_thread(self._store.create, policy)
        await self.load()
        return created, seq

    async def update(self, policy: Policy, expected_generation: int) -> tuple[Policy, int]:
        policy = validate_policy(policy)
        v.check_generation(expected_generation, "expected_generation")
        updated, seq = await asyncio.to_thread(self._store.update, policy, expected_generation)
        await self.load()
        return updated, seq

    async def delete(self, tenant: str, name: str, policy_id: str, expected_generation: int) -> int:
        tenant = v.tenant_or_default(tenant, "policy.tenant")
        _check_ref(name, policy_id)
        v.check_generation(expected_generation, "expected_generation")
        seq = await asyncio.to_thread(self._store.delete, tenant, name, policy_id, expected_generation)
        await self.load()
        return seq

    async def get(self, tenant: str, name: str, policy_id: str = "") -> Policy:
        tenant = v.tenant_or_default(tenant, "policy.tenant")
        _check_ref(name, policy_id)
        return await asyncio.to_thread(self._store.get, tenant, name, policy_id)

    async def list_policies(self, tenant: str) -> list[Policy]:
        return await asyncio.to_thread(self._store.list_policies, v.tenant_or_default(tenant, "tenant"))

    async def default_effect(self, tenant: str) -> PolicyEffect:
        return await asyncio.to_thread(self._store.default_effect, v.tenant_or_default(tenant, "tenant"))

    async def set_default_effect(self, tenant: str, effect: PolicyEffect) -> int:
        tenant = v.tenant_or_default(tenant, "settings.tenant")
        seq = await asyncio.to_thread(self._store.set_default_effect, tenant, effect)
        await self.load()
        return seq


def _check_ref(name: str, policy_id: str) -> None:
    if policy_id:
        v.check_text(policy_id, "policy.id", 64)
    else:
        v.check_name(name, "policy.name")


def _check_requirements(requirements: tuple[LabelRequirement, ...], field: str) -> None:
    if len(requirements) > MAX_REQUIREMENTS:
        raise InvalidArgument(field, f"has {len(requirements)} requirements; the limit is {MAX_REQUIREMENTS}")
    for i, requirement in enumerate(requirements):
        where = f"{field}[{i}]"
        if not v.LABEL_KEY_RE.match(requirement.key):
            raise InvalidArgument(f"{where}.key", "a label key is 1-63 letters, digits or . _ / -")
        needs_values = requirement.operator in (LabelOperator.IN, LabelOperator.NOT_IN)
        if needs_values and not requirement.values:
            raise InvalidArgument(f"{where}.values", f"{requirement.operator.name} needs at least one value")
        if not needs_values and requirement.values:
            raise InvalidArgument(f"{where}.values", f"{requirement.operator.name} takes no values")
        v.check_tokens(requirement.values, f"{where}.values", max_len=v.MAX_LABEL_VALUE)


def validate_policy(policy: Policy) -> Policy:
    """Checks a policy and returns it with its tenant defaulted."""
    policy = replace(policy, tenant=v.tenant_or_default(policy.tenant, "policy.tenant"))
    v.check_name(policy.name, "policy.name")
    v.check_text(policy.description, "policy.description", v.MAX_DESCRIPTION)
    subject = policy.subject
    if not (subject.everyone or subject.principals or subject.roles):
        raise InvalidArgument("policy.subject", "a policy needs a subject: everyone, principals or roles")
    v.check_tokens(subject.principals, "policy.subject.principals", max_len=128)
    v.check_tokens(subject.roles, "policy.subject.roles")
    target = policy.target
    v.check_tokens(target.agent_ids, "policy.target.agent_ids")
    if len(target.kinds) > len(AgentKind):
        raise InvalidArgument("policy.target.kinds", "lists a kind twice")
    v.check_tokens(target.tags_any, "policy.target.tags_any")
    _check_requirements(target.labels, "policy.target.labels")
    v.check_tokens(target.regions_any, "policy.target.regions_any")
    v.check_tokens(target.regions_outside, "policy.target.regions_outside")
    _check_requirements(policy.condition.task_labels, "policy.condition.task_labels")
    return policy
