"""Policy messages <-> domain policies."""

from __future__ import annotations

from capreg.v1 import policy_pb2

from registry.domain.errors import InvalidArgument
from registry.domain.policy import (
    LabelOperator,
    LabelRequirement,
    Policy,
    PolicyCondition,
    PolicyEffect,
    PolicySubject,
    PolicyTarget,
)
from registry.transport.convert import KIND_TO_PROTO, kind_from_proto, timestamp

EFFECT_FROM_PROTO = {
    policy_pb2.POLICY_EFFECT_ALLOW: PolicyEffect.ALLOW,
    policy_pb2.POLICY_EFFECT_DENY: PolicyEffect.DENY,
}
EFFECT_TO_PROTO = {effect: number for number, effect in EFFECT_FROM_PROTO.items()}
OPERATOR_FROM_PROTO = {
    policy_pb2.LabelRequirement.OPERATOR_IN: LabelOperator.IN,
    policy_pb2.LabelRequirement.OPERATOR_NOT_IN: LabelOperator.NOT_IN,
    policy_pb2.LabelRequirement.OPERATOR_EXISTS: LabelOperator.EXISTS,
    policy_pb2.LabelRequirement.OPERATOR_DOES_NOT_EXIST: LabelOperator.DOES_NOT_EXIST,
}
OPERATOR_TO_PROTO = {operator: number for number, operator in OPERATOR_FROM_PROTO.items()}


def effect_from_proto(value: int, field: str) -> PolicyEffect:
    try:
        return EFFECT_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown effect {value}; use ALLOW or DENY") from None


def _requirements(items: list[policy_pb2.LabelRequirement], field: str) -> tuple[LabelRequirement, ...]:
    out = []
    for i, item in enumerate(items):
        try:
            operator = OPERATOR_FROM_PROTO[item.operator]
        except KeyError:
            raise InvalidArgument(f"{field}[{i}].operator", "use IN, NOT_IN, EXISTS or DOES_NOT_EXIST") from None
        out.append(LabelRequirement(item.key, operator, tuple(item.values)))
    return tuple(out)


def policy_from_proto(msg: policy_pb2.Policy, field: str = "policy") -> Policy:
    target = msg.target
    return Policy(
        tenant=msg.tenant,
        name=msg.name,
        description=msg.description,
        effect=effect_from_proto(msg.effect, f"{field}.effect"),
        subject=PolicySubject(msg.subject.everyone, tuple(msg.subject.principals), tuple(msg.subject.roles)),
        target=PolicyTarget(
            agent_ids=tuple(target.agent_ids),
            kinds=tuple(kind_from_proto(k, f"{field}.target.kinds[{i}]") for i, k in enumerate(target.kinds)),
            tags_any=tuple(target.tags_any),
            labels=_requirements(list(target.labels), f"{field}.target.labels"),
            regions_any=tuple(target.regions_any),
            regions_outside=tuple(target.regions_outside),
        ),
        condition=PolicyCondition(_requirements(list(msg.condition.task_labels), f"{field}.condition.task_labels")),
    )


def _requirements_to_proto(items: tuple[LabelRequirement, ...]) -> list[policy_pb2.LabelRequirement]:
    return [
        policy_pb2.LabelRequirement(key=r.key, operator=OPERATOR_TO_PROTO[r.operator], values=r.values) for r in items
    ]


def policy_to_proto(policy: Policy) -> policy_pb2.Policy:
    target = policy.target
    return policy_pb2.Policy(
        id=policy.id,
        tenant=policy.tenant,
        name=policy.name,
        description=policy.description,
        effect=EFFECT_TO_PROTO[policy.effect],
        subject=policy_pb2.PolicySubject(
            everyone=policy.subject.everyone, principals=policy.subject.principals, roles=policy.subject.roles
        ),
        target=policy_pb2.PolicyTarget(
            agent_ids=target.agent_ids,
            kinds=[KIND_TO_PROTO[k] for k in target.kinds],
            tags_any=target.tags_any,
            labels=_requirements_to_proto(target.labels),
            regions_any=target.regions_any,
            regions_outside=target.regions_outside,
        ),
        condition=policy_pb2.PolicyCondition(task_labels=_requirements_to_proto(policy.condition.task_labels)),
        generation=policy.generation,
        create_time=timestamp(policy.created_at),
        update_time=timestamp(policy.updated_at),
    )
