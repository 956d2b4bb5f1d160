"""No Discover answer holds a capability the caller may not see or use: random tenants, visibilities,
policies and queries, checked against a plain Python reading of the rules."""

from __future__ import annotations

import uuid

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.domain.models import (
    AgentKind,
    AgentStatus,
    Caller,
    Capability,
    CatalogChange,
    CatalogEntry,
    DiscoverFilters,
    Visibility,
)
from registry.domain.policy import (
    LabelOperator,
    LabelRequirement,
    Policy,
    PolicyCondition,
    PolicyEffect,
    PolicySubject,
    PolicyTarget,
    TenantPolicies,
)
from registry.index.columns import constraint_mask
from registry.index.policy_mask import policy_mask
from registry.index.space_index import PlannerParams, SpaceIndex

TENANTS = ["a", "b", "c"]
REGIONS = ["eu", "us", "ap"]
DIM = 6

labels_st = st.dictionaries(st.sampled_from(["compliance", "team"]), st.sampled_from(["x", "y"]), max_size=2)
requirement_st = st.builds(
    LabelRequirement,
    key=st.sampled_from(["compliance", "team", "data_class"]),
    operator=st.sampled_from(list(LabelOperator)),
    values=st.sampled_from([("x",), ("x", "y"), ("pii",)]),
).map(
    lambda r: (
        LabelRequirement(r.key, r.operator, ())
        if r.operator in (LabelOperator.EXISTS, LabelOperator.DOES_NOT_EXIST)
        else r
    )
)


@st.composite
def entries(draw: st.DrawFn) -> CatalogEntry:
    visibility = draw(st.sampled_from(list(Visibility)))
    tenant = draw(st.sampled_from(TENANTS))
    return CatalogEntry(
        capability=Capability(
            name="c", version="1.0.0", id=str(uuid.uuid4()),
            tags=tuple(draw(st.lists(st.sampled_from(["t1", "t2"]), max_size=2, unique=True))),
            regions=tuple(draw(st.lists(st.sampled_from(REGIONS), max_size=2, unique=True))),
        ),
        agent_id=draw(st.sampled_from(["ag1", "ag2", "ag3", "ag4"])),
        agent_name="n", tenant=tenant,
        kind=draw(st.sampled_from(list(AgentKind))),
        endpoint="", labels=draw(labels_st),
        status=draw(st.sampled_from([AgentStatus.ACTIVE, AgentStatus.ACTIVE, AgentStatus.DRAINING])),
        vector=np.array(draw(st.lists(st.floats(0.1, 1), min_size=DIM, max_size=DIM)), dtype=np.float32),
        visibility=visibility,
        shared_with=tuple(draw(st.lists(st.sampled_from(TENANTS), max_size=2, unique=True)))
        if visibility is Visibility.SHARED else (),
    )  # fmt: skip


policies_st = st.lists(
    st.builds(
        Policy,
        tenant=st.sampled_from(TENANTS),
        name=st.text("pq", min_size=1, max_size=3),
        effect=st.sampled_from(list(PolicyEffect)),
        subject=st.builds(
            PolicySubject,
            everyone=st.booleans(),
            principals=st.lists(st.sampled_from(["alice", "bob"]), max_size=1).map(tuple),
            roles=st.lists(st.sampled_from(["dev", "ops"]), max_size=1).map(tuple),
        ),
        target=st.builds(
            PolicyTarget,
            agent_ids=st.lists(st.sampled_from(["ag1", "ag2"]), max_size=1).map(tuple),
            kinds=st.lists(st.sampled_from(list(AgentKind)), max_size=1).map(tuple),
            tags_any=st.lists(st.sampled_from(["t1", "t2"]), max_size=1).map(tuple),
            labels=st.lists(requirement_st, max_size=1).map(tuple),
            regions_any=st.lists(st.sampled_from(REGIONS), max_size=1).map(tuple),
            regions_outside=st.lists(st.sampled_from(REGIONS), max_size=1).map(tuple),
        ),
        condition=st.builds(PolicyCondition, st.lists(requirement_st, max_size=1).map(tuple)),
    ),
    max_size=4,
)


def target_holds(target: PolicyTarget, e: CatalogEntry) -> bool:
    regions = e.capability.regions
    return all(
        (
            not target.agent_ids or e.agent_id in target.agent_ids,
            not target.kinds or e.kind in target.kinds,
            not target.tags_any or bool(set(target.tags_any) & set(e.capability.tags)),
            all(r.holds(e.labels) for r in target.labels),
            not target.regions_any or not regions or bool(set(target.regions_any) & set(regions)),
            not target.regions_outside or not regions or bool(set(regions) - set(target.regions_outside)),
        )
    )


def may_use(e: CatalogEntry, caller: Caller, rules: TenantPolicies, task: dict[str, str]) -> bool:
    visible = (
        e.tenant == caller.tenant
        or e.visibility is Visibility.PUBLIC
        or (e.visibility is Visibility.SHARED and caller.tenant in e.shared_with)
    )
    applicable = [p for p in rules.policies if p.applies(caller, task)]
    allowed = rules.default_effect is PolicyEffect.ALLOW or any(
        target_holds(p.target, e) for p in applicable if p.effect is PolicyEffect.ALLOW
    )
    denied = any(target_holds(p.target, e) for p in applicable if p.effect is PolicyEffect.DENY)
    return visible and allowed and not denied and e.status is AgentStatus.ACTIVE


@settings(max_examples=300, deadline=None)
@given(
    catalog=st.lists(entries(), min_size=1, max_size=25),
    policies=policies_st,
    default=st.sampled_from(list(PolicyEffect)),
    caller=st.builds(
        Caller,
        tenant=st.sampled_from(TENANTS),
        principal=st.sampled_from(["", "alice", "bob"]),
        roles=st.frozensets(st.sampled_from(["dev", "ops"])),
    ),
    task=st.dictionaries(st.just("data_class"), st.sampled_from(["pii", "public"]), max_size=1),
    k=st.integers(1, 10),
    exact_max_rows=st.sampled_from([0, 1000]),
)
def test_answers_never_hold_what_the_caller_may_not_use(
    catalog: list[CatalogEntry],
    policies: list[Policy],
    default: PolicyEffect,
    caller: Caller,
    task: dict[str, str],
    k: int,
    exact_max_rows: int,
) -> None:
    index = SpaceIndex(DIM, planner=PlannerParams(exact_always_rows=exact_max_rows, exact_max_rows=exact_max_rows))
    index.apply(CatalogChange(seq=1, upserts=tuple(catalog)))
    rules = TenantPolicies(default, tuple(p for p in policies if p.tenant == caller.tenant))
    rule_mask = policy_mask(index.columns, index.size, rules, caller, task)
    mask, _ = constraint_mask(index.columns, index.size, caller.tenant, DiscoverFilters(), 0, 0, None, rule_mask)
    found = index.search(np.ones(DIM, dtype=np.float32), k, mask)
    usable = {e.capability.id for e in catalog if may_use(e, caller, rules, task)}
    answered = [index.entry(int(r)).capability.id for r in found.rows]
    assert set(answered) <= usable
    assert len(answered) == min(k, len(usable))
