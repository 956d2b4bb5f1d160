"""Who may call what: API keys, roles, and the one table of which roles each RPC needs.

Keys look like `capreg_<id>_<secret>`: the id is public and finds the row; the secret (32 random
bytes) is shown once and stored only as its sha256, which is enough for a secret of that entropy."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from registry.domain.errors import DomainError, ErrorCode

KEY_PREFIX = "capreg"
ALL_TENANTS = "*"


class Role(StrEnum):
    AGENT = "agent"  # registers and heartbeats its own tenant's agents
    ORCHESTRATOR = "orchestrator"  # Discover, budgets, outcomes
    OPERATOR = "operator"  # administers one tenant: policies, keys, budgets, vector spaces
    CLUSTER_OPERATOR = "cluster-operator"  # administers every tenant


class Unauthenticated(DomainError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = ErrorCode.PERMISSION_DENIED


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str  # ALL_TENANTS for a cluster operator
    name: str
    roles: frozenset[str]
    secret_sha256: str
    created_at: datetime
    created_by: str = ""
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller of one RPC."""

    key_id: str
    tenant: str
    name: str
    roles: frozenset[str]

    @property
    def is_cluster_operator(self) -> bool:
        return Role.CLUSTER_OPERATOR in self.roles

    @property
    def actor(self) -> str:
        return f"{self.name} ({self.key_id})" if self.key_id else self.name

    def tenant_for(self, requested: str, field: str = "tenant") -> str:
        """The tenant a request acts on: its own, unless a cluster operator names another."""
        if self.is_cluster_operator:
            return requested or (self.tenant if self.tenant != ALL_TENANTS else "default")
        if requested and requested != self.tenant:
            shown = requested if len(requested) <= 64 else requested[:64] + "..."  # never echo a huge input
            raise PermissionDenied(f"this key belongs to tenant {self.tenant!r}, not {shown!r}", field=field)
        return self.tenant


LOCAL = Identity(key_id="", tenant="default", name="local", roles=frozenset({Role.CLUSTER_OPERATOR}))
"""Who calls when authentication is switched off (local development only)."""


def new_secret() -> tuple[str, str, str]:
    """A fresh key: (id, secret, the full token to hand out once)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}_{key_id}_{secret}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str]:
    """(id, secret) of a bearer token; raises Unauthenticated without echoing it."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        raise Unauthenticated("the bearer token is not a capreg API key (capreg_<id>_<secret>)")
    return parts[1], parts[2]


def secret_matches(secret: str, expected_sha256: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), expected_sha256)


# Which roles may call each RPC (cluster operators may call everything). Health and reflection are open.
_READ = frozenset({Role.AGENT, Role.ORCHESTRATOR, Role.OPERATOR})
_AGENT_WRITE = frozenset({Role.AGENT, Role.OPERATOR})
_ORCHESTRATE = frozenset({Role.ORCHESTRATOR, Role.OPERATOR})
_ADMIN = frozenset({Role.OPERATOR})
_CLUSTER_ONLY: frozenset[Role] = frozenset()  # no role but cluster-operator (which may call everything)
PERMISSIONS: dict[str, frozenset[str]] = {
    "/capreg.v1.RegistryService/RegisterAgent": _AGENT_WRITE,
    "/capreg.v1.RegistryService/RegisterAgents": _AGENT_WRITE,
    "/capreg.v1.RegistryService/UpdateAgentStatus": _AGENT_WRITE,
    "/capreg.v1.RegistryService/DeregisterAgent": _AGENT_WRITE,
    "/capreg.v1.RegistryService/Heartbeat": _AGENT_WRITE,
    "/capreg.v1.RegistryService/KeepAlive": _AGENT_WRITE,
    "/capreg.v1.RegistryService/GetAgent": _READ,
    "/capreg.v1.RegistryService/ImportAgentCard": _AGENT_WRITE,
    "/capreg.v1.RegistryService/ImportMcpServer": _AGENT_WRITE,
    "/capreg.v1.RegistryService/ExportAgentCard": _READ,
    "/capreg.v1.RegistryService/ExportMcpServer": _READ,
    "/capreg.v1.RegistryService/ListAgents": _READ,
    "/capreg.v1.DiscoveryService/Discover": _ORCHESTRATE,
    "/capreg.v1.DiscoveryService/WatchDiscover": _ORCHESTRATE,
    "/capreg.v1.OutcomeService/ReportOutcome": _ORCHESTRATE,
    "/capreg.v1.BudgetService/GetBudget": _ORCHESTRATE,
    "/capreg.v1.BudgetService/ListBudgets": _ORCHESTRATE,
    "/capreg.v1.BudgetService/Reserve": _ORCHESTRATE,
    "/capreg.v1.BudgetService/Commit": _ORCHESTRATE,
    "/capreg.v1.BudgetService/Release": _ORCHESTRATE,
    "/capreg.v1.BudgetService/GetReservation": _ORCHESTRATE,
    "/capreg.v1.BudgetService/CreateBudget": _ADMIN,
    "/capreg.v1.BudgetService/UpdateBudget": _ADMIN,
    "/capreg.v1.BudgetService/DeleteBudget": _ADMIN,
    "/capreg.v1.PolicyService/CreatePolicy": _ADMIN,
    "/capreg.v1.PolicyService/GetPolicy": _ADMIN,
    "/capreg.v1.PolicyService/ListPolicies": _ADMIN,
    "/capreg.v1.PolicyService/UpdatePolicy": _ADMIN,
    "/capreg.v1.PolicyService/DeletePolicy": _ADMIN,
    "/capreg.v1.PolicyService/GetTenantSettings": _ADMIN,
    "/capreg.v1.PolicyService/UpdateTenantSettings": _ADMIN,
    "/capreg.v1.KeyService/CreateKey": _ADMIN,
    "/capreg.v1.KeyService/ListKeys": _ADMIN,
    "/capreg.v1.KeyService/RevokeKey": _ADMIN,
    "/capreg.v1.AuditService/ListAudit": _ADMIN,
    "/capreg.v1.AdminService/GetIndexStatus": _ADMIN,
    # Vector spaces serve every tenant: only cluster operators change or inspect them.
    "/capreg.v1.AdminService/CreateSpace": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/GetSpace": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/ListSpaces": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/BackfillSpace": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/CompareSpaces": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/SetShadow": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/PromoteSpace": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/RollbackSpace": _CLUSTER_ONLY,
    "/capreg.v1.AdminService/RetireSpace": _CLUSTER_ONLY,
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def authorize(identity: Identity, method: str) -> None:
    """Raise PermissionDenied unless one of the identity's roles may call `method`."""
    if identity.is_cluster_operator:
        return
    needed = PERMISSIONS.get(method)
    if needed is None:  # a method missing from the table is closed, never open
        raise PermissionDenied(f"{method} is not open to any role but cluster-operator")
    rpc = method.rsplit("/", 1)[-1]
    if not needed:
        raise PermissionDenied(f"{rpc} is for cluster operators: it changes what every tenant is served")
    if not identity.roles & needed:
        raise PermissionDenied(f"{rpc} needs one of the roles {sorted(needed)}; this key has {sorted(identity.roles)}")
