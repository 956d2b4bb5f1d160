"""Policies as masks: each target compiles to a boolean mask over the attribute columns, so policy
evaluation costs a few numpy operations per applicable policy, not a Python call per candidate."""

from __future__ import annotations

import numpy as np

from registry.domain.models import Caller
from registry.domain.policy import LabelOperator, LabelRequirement, PolicyEffect, PolicyTarget, TenantPolicies
from registry.index.columns import KIND_CODES, AttributeColumns, Mask


def requirement_mask(columns: AttributeColumns, size: int, requirement: LabelRequirement) -> Mask:
    has_value = columns.any_of("label", (f"{requirement.key}={v}" for v in requirement.values), size)
    has_key = columns.rows_with("label_key", requirement.key, size)
    if requirement.operator is LabelOperator.IN:
        return has_value
    if requirement.operator is LabelOperator.NOT_IN:
        return ~has_value
    if requirement.operator is LabelOperator.EXISTS:
        return has_key
    return ~has_key


def target_mask(columns: AttributeColumns, size: int, target: PolicyTarget) -> Mask:
    mask = np.ones(size, dtype=np.bool_)
    if target.agent_ids:
        mask &= columns.any_of("agent_id", target.agent_ids, size)
    if target.kinds:
        mask &= np.isin(columns.kind[:size], [KIND_CODES[k] for k in target.kinds])
    if target.tags_any:
        mask &= columns.any_of("tag", target.tags_any, size)
    for requirement in target.labels:
        mask &= requirement_mask(columns, size, requirement)
    if target.regions_any:
        mask &= columns.any_of("region", target.regions_any, size) | columns.anywhere[:size]
    if target.regions_outside:
        inside = set(target.regions_outside)
        outside = [region for region in columns.postings["region"] if region not in inside]
        mask &= columns.any_of("region", outside, size) | columns.anywhere[:size]
    return mask


def policy_mask(
    columns: AttributeColumns, size: int, rules: TenantPolicies, caller: Caller, task_labels: dict[str, str]
) -> Mask | None:
    """Rows the caller may use under its tenant's policies, or None when nothing restricts it."""
    applicable = [p for p in rules.policies if p.applies(caller, task_labels)]
    allows = [p for p in applicable if p.effect is PolicyEffect.ALLOW]
    denies = [p for p in applicable if p.effect is PolicyEffect.DENY]
    if rules.default_effect is PolicyEffect.ALLOW and not denies:
        return None
    if rules.default_effect is PolicyEffect.ALLOW:
        allowed = np.ones(size, dtype=np.bool_)
    else:
        allowed = np.zeros(size, dtype=np.bool_)
        for policy in allows:
            allowed |= target_mask(columns, size, policy.target)
    for policy in denies:  # deny wins over allow
        allowed &= ~target_mask(columns, size, policy.target)
    return allowed
