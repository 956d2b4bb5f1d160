"""Policies and per-tenant policy settings: every write one transaction with a change_log row."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from registry.domain.errors import Conflict, NotFound
from registry.domain.models import AgentKind
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
from registry.store import changelog
from registry.store import tables as t
from registry.store.repository import RegistryStore, now_utc
from registry.store.rows import utc

POLICY_ENTITIES = ("policy", "tenant")


def _requirements(items: list[dict[str, Any]]) -> tuple[LabelRequirement, ...]:
    return tuple(LabelRequirement(i["key"], LabelOperator(i["operator"]), tuple(i["values"])) for i in items)


def policy_from_row(row: Any) -> Policy:
    subject, target, condition = row["subject"], row["target"], row["condition"]
    return Policy(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        description=row["description"],
        effect=PolicyEffect(row["effect"]),
        subject=PolicySubject(subject["everyone"], tuple(subject["principals"]), tuple(subject["roles"])),
        target=PolicyTarget(
            agent_ids=tuple(target["agent_ids"]),
            kinds=tuple(AgentKind(k) for k in target["kinds"]),
            tags_any=tuple(target["tags_any"]),
            labels=_requirements(target["labels"]),
            regions_any=tuple(target["regions_any"]),
            regions_outside=tuple(target["regions_outside"]),
        ),
        condition=PolicyCondition(_requirements(condition["task_labels"])),
        generation=row["generation"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
    )


def _rules(policy: Policy) -> dict[str, Any]:
    """JSON column values; enums become their plain values."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value.value if isinstance(value, LabelOperator | AgentKind) else value

    return {
        "subject": plain(asdict(policy.subject)),
        "target": plain(asdict(policy.target)),
        "condition": plain(asdict(policy.condition)),
    }


class PolicyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, policy: Policy) -> tuple[Policy, int]:
        now = now_utc()
        try:
            with self.engine.begin() as conn:
                RegistryStore._ensure_tenant(conn, policy.tenant, now)
                policy_id = str(uuid.uuid4())
                conn.execute(
                    insert(t.policies).values(
                        id=policy_id,
                        tenant_id=policy.tenant,
                        name=policy.name,
                        description=policy.description,
                        effect=policy.effect.value,
                        generation=1,
                        created_at=now,
                        updated_at=now,
                        **_rules(policy),
                    )
                )
                seq = self._log(conn, policy.tenant, policy_id, "create")
                return self._load(conn, policy_id), seq
        except IntegrityError as exc:
            raise Conflict(
                f"policy {policy.tenant}/{policy.name} already exists; update it or choose another name"
            ) from exc

    def update(self, policy: Policy, expected_generation: int) -> tuple[Policy, int]:
        with self.engine.begin() as conn:
            row = self._find(conn, policy.tenant, policy.name, for_update=True)
            if expected_generation and row["generation"] != expected_generation:
                raise Conflict(
                    f"policy {policy.tenant}/{policy.name} is at generation {row['generation']}, "
                    f"not {expected_generation}; re-read it and retry"
                )
            conn.execute(
                update(t.policies)
                .where(t.policies.c.id == row["id"])
                .values(
                    description=policy.description,
                    effect=policy.effect.value,
                    generation=t.policies.c.generation + 1,
                    updated_at=now_utc(),
                    **_rules(policy),
                )
            )
            seq = self._log(conn, policy.tenant, row["id"], "update")
            return self._load(conn, row["id"]), seq

    def delete(self, tenant: str, name: str, policy_id: str, expected_generation: int) -> int:
        with self.engine.begin() as conn:
            row = self._find(conn, tenant, name, policy_id, for_update=True)
            if expected_generation and row["generation"] != expected_generation:
                raise Conflict(f"policy {row['name']} is at generation {row['generation']}, not {expected_generation}")
            conn.execute(delete(t.policies).where(t.policies.c.id == row["id"]))
            return self._log(conn, row["tenant_id"], row["id"], "delete")

    def get(self, tenant: str, name: str, policy_id: str = "") -> Policy:
        with self.engine.connect() as conn:
            return policy_from_row(self._find(conn, tenant, name, policy_id))

    def list_policies(self, tenant: str | None = None) -> list[Policy]:
        stmt = select(t.policies).order_by(t.policies.c.tenant_id, t.policies.c.name)
        if tenant is not None:
            stmt = stmt.where(t.policies.c.tenant_id == tenant)
        with self.engine.connect() as conn:
            return [policy_from_row(r) for r in conn.execute(stmt).mappings()]

    def default_effect(self, tenant: str) -> PolicyEffect:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(t.tenants.c.default_policy_effect).where(t.tenants.c.id == tenant)
            ).scalar_one_or_none()
        return PolicyEffect(value or PolicyEffect.ALLOW.value)

    def set_default_effect(self, tenant: str, effect: PolicyEffect) -> int:
        now = now_utc()
        with self.engine.begin() as conn:
            RegistryStore._ensure_tenant(conn, tenant, now)
            conn.execute(update(t.tenants).where(t.tenants.c.id == tenant).values(default_policy_effect=effect.value))
            return self._log(conn, tenant, tenant, "settings", entity="tenant")

    def snapshot(self) -> tuple[int, dict[str, TenantPolicies]]:
        """Every tenant's rules, with the change sequence they reflect: what each process serves from."""
        with self.engine.connect() as conn:
            seq = self._last_seq(conn)
            effects = dict(conn.execute(select(t.tenants.c.id, t.tenants.c.default_policy_effect)).all())
            grouped: dict[str, list[Policy]] = {}
            for row in conn.execute(select(t.policies).order_by(t.policies.c.name)).mappings():
                grouped.setdefault(row["tenant_id"], []).append(policy_from_row(row))
        return seq, {
            tenant: TenantPolicies(PolicyEffect(effect), tuple(grouped.get(tenant, ())))
            for tenant, effect in effects.items()
        }

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return self._last_seq(conn)

    @staticmethod
    def _last_seq(conn: Connection) -> int:
        return changelog.last_seq(conn, POLICY_ENTITIES)

    @staticmethod
    def _log(conn: Connection, tenant: str, entity_id: str, op: str, entity: str = "policy") -> int:
        return changelog.append(conn, tenant, entity, entity_id, op)

    @staticmethod
    def _find(conn: Connection, tenant: str, name: str, policy_id: str = "", *, for_update: bool = False) -> Any:
        if policy_id:
            stmt = select(t.policies).where(t.policies.c.id == policy_id, t.policies.c.tenant_id == tenant)
        else:
            stmt = select(t.policies).where(t.policies.c.tenant_id == tenant, t.policies.c.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).mappings().first()
        if row is None:
            raise NotFound(f"policy {tenant}/{policy_id or name} does not exist; `capreg policies list` shows them")
        return row

    @staticmethod
    def _load(conn: Connection, policy_id: str) -> Policy:
        return policy_from_row(conn.execute(select(t.policies).where(t.policies.c.id == policy_id)).mappings().one())
