"""Policies: allow and deny rules of subject x target x condition, per tenant. Deny wins over allow;
when neither applies, the tenant's default effect decides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from registry.domain.models import AgentKind, Caller


class PolicyEffect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class LabelOperator(StrEnum):
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"
    DOES_NOT_EXIST = "does_not_exist"


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    operator: LabelOperator
    values: tuple[str, ...] = ()

    def holds(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: NotIn and DoesNotExist hold when the key is absent."""
        present = self.key in labels
        if self.operator is LabelOperator.IN:
            return present and labels[self.key] in self.values
        if self.operator is LabelOperator.NOT_IN:
            return not present or labels[self.key] not in self.values
        if self.operator is LabelOperator.EXISTS:
            return present
        return not present


@dataclass(frozen=True, slots=True)
class PolicySubject:
    everyone: bool = False
    principals: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    def matches(self, caller: Caller) -> bool:
        return (
            self.everyone
            or (bool(caller.principal) and caller.principal in self.principals)
            or bool(caller.roles.intersection(self.roles))
        )


@dataclass(frozen=True, slots=True)
class PolicyTarget:
    """Every non-empty clause must hold; no clause at all covers every capability."""

    agent_ids: tuple[str, ...] = ()
    kinds: tuple[AgentKind, ...] = ()
    tags_any: tuple[str, ...] = ()
    labels: tuple[LabelRequirement, ...] = ()
    regions_any: tuple[str, ...] = ()
    regions_outside: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyCondition:
    task_labels: tuple[LabelRequirement, ...] = ()

    def holds(self, task_labels: Mapping[str, str]) -> bool:
        return all(requirement.holds(task_labels) for requirement in self.task_labels)


@dataclass(frozen=True, slots=True)
class Policy:
    tenant: str
    name: str
    effect: PolicyEffect
    subject: PolicySubject = field(default_factory=PolicySubject)
    target: PolicyTarget = field(default_factory=PolicyTarget)
    condition: PolicyCondition = field(default_factory=PolicyCondition)
    description: str = ""
    # Set by the store.
    id: str = ""
    generation: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def applies(self, caller: Caller, task_labels: Mapping[str, str]) -> bool:
        return self.tenant == caller.tenant and self.subject.matches(caller) and self.condition.holds(task_labels)


@dataclass(frozen=True, slots=True)
class TenantPolicies:
    """What Discover needs of one tenant: its default effect and its policies."""

    default_effect: PolicyEffect = PolicyEffect.ALLOW
    policies: tuple[Policy, ...] = ()
