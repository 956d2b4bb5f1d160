"""API keys: create (the token is shown once), list, revoke; authenticate every call from memory.

Keys are read into memory at start-up and whenever the change log shows a key change (this process's
own changes at once; other processes' when the change-log follower reaches them).
Authentication is then a dictionary lookup, a sha256 and a constant-time compare."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.domain import validation as v
from registry.domain.auth import (
    ALL_TENANTS,
    ApiKey,
    Identity,
    PermissionDenied,
    Role,
    Unauthenticated,
    hash_secret,
    new_secret,
    parse_token,
    secret_matches,
)
from registry.domain.errors import InvalidArgument
from registry.store.keys import KeyStore
from registry.store.repository import now_utc

log = logging.getLogger(__name__)
KEY_FILE = "operator.key"


class KeyService:
    def __init__(self, store: KeyStore, clock: Callable[[], datetime] = now_utc):
        self._store = store
        self._clock = clock
        self._keys: dict[str, ApiKey] = {}
        self._seq = -1

    # -- the hot path ---------------------------------------------------------------------------------

    def authenticate(self, token: str) -> Identity:
        key_id, secret = parse_token(token)
        key = self._keys.get(key_id)
        # One message for every failure, so a caller learns nothing about which keys exist.
        if key is None or not secret_matches(secret, key.secret_sha256):
            raise Unauthenticated("the API key is not valid; create one with `capreg keys create`")
        if key.revoked_at is not None:
            raise Unauthenticated("the API key was revoked; ask an operator for a new one")
        if not key.usable_at(self._clock()):
            raise Unauthenticated("the API key has expired; ask an operator for a new one")
        return Identity(key_id=key.id, tenant=key.tenant, name=key.name, roles=key.roles)

    # -- keeping the cache fresh ----------------------------------------------------------------------

    async def load(self) -> None:
        seq, keys = await asyncio.to_thread(self._store.snapshot)
        if seq >= self._seq:
            self._keys, self._seq = keys, seq

    async def refresh_if_changed(self) -> bool:
        if await asyncio.to_thread(self._store.last_seq) > self._seq:
            await self.load()
            return True
        return False

    # -- administration -------------------------------------------------------------------------------

    async def create(
        self, caller: Identity, tenant: str, name: str, roles: list[str], expires_at: datetime | None
    ) -> tuple[ApiKey, str, int]:
        """A new key and its token (shown once). Operators create keys for their own tenant only, and
        only cluster operators create cluster-operator keys."""
        tenant = caller.tenant_for(tenant) if tenant != ALL_TENANTS else tenant
        v.check_name(name, "name")
        if not roles:
            raise InvalidArgument("roles", f"give at least one of {[r.value for r in Role]}")
        v.check_tokens(roles, "roles")
        if not set(roles) & set(Role):
            raise InvalidArgument("roles", f"a key needs at least one of {[r.value for r in Role]}")
        if (Role.CLUSTER_OPERATOR in roles or tenant == ALL_TENANTS) and not caller.is_cluster_operator:
            raise PermissionDenied("only a cluster operator may create cluster-operator keys", field="roles")
        if tenant == ALL_TENANTS and Role.CLUSTER_OPERATOR not in roles:
            raise InvalidArgument("tenant", "only a cluster-operator key spans every tenant ('*')")
        if tenant != ALL_TENANTS:
            v.tenant_or_default(tenant, "tenant")
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise InvalidArgument("expire_time", "is in the past")
        key_id, secret, token = new_secret()
        key = ApiKey(
            id=key_id,
            tenant=tenant,
            name=name,
            roles=frozenset(roles),
            secret_sha256=hash_secret(secret),
            created_at=now,
            created_by=caller.actor,
            expires_at=expires_at,
        )
        seq = await asyncio.to_thread(self._store.create, key)
        await self.load()
        return key, token, seq

    async def list_keys(self, caller: Identity, tenant: str) -> list[ApiKey]:
        return await asyncio.to_thread(self._store.list_keys, _scope(caller, tenant))

    async def revoke(self, caller: Identity, key_id: str) -> tuple[ApiKey, int]:
        v.check_text(key_id, "id", 32, required=True)
        scope = None if caller.is_cluster_operator else caller.tenant
        key, seq = await asyncio.to_thread(self._store.revoke, key_id, scope)
        await self.load()
        return key, seq

    async def bootstrap(self, data_dir: Path) -> Path | None:
        """On first start (no key at all), create a cluster-operator key and write it to a file only
        this user can read. Returns the file, or None when keys already exist."""
        if await asyncio.to_thread(self._store.count):
            return None
        system = Identity(key_id="", tenant=ALL_TENANTS, name="bootstrap", roles=frozenset({Role.CLUSTER_OPERATOR}))
        _, token, _ = await self.create(system, ALL_TENANTS, "bootstrap-operator", [Role.CLUSTER_OPERATOR], None)
        path = data_dir / KEY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)
        return path

    async def audit(
        self, identity: Identity, tenant: str, action: str, entity: str, entity_id: str, details: Any
    ) -> None:
        await asyncio.to_thread(self._store.audit, tenant, identity.actor, action, entity, entity_id, details)

    async def list_audit(self, caller: Identity, tenant: str, limit: int, before_id: int) -> list[dict[str, Any]]:
        if not 0 <= limit <= 1000:
            raise InvalidArgument("limit", "must be between 0 (default 100) and 1000")
        return await asyncio.to_thread(self._store.list_audit, _scope(caller, tenant), limit or 100, before_id)


def _scope(caller: Identity, tenant: str) -> str | None:
    """The tenant a listing covers: every tenant (None) for a cluster operator who names none."""
    if caller.is_cluster_operator and not tenant:
        return None
    scope = caller.tenant_for(tenant)
    if scope != ALL_TENANTS:  # a cluster operator's own keys are listed under "*"
        v.tenant_or_default(scope, "tenant")
    return scope
