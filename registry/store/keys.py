"""API keys (hashes only) and the audit log."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from registry.domain.auth import ApiKey
from registry.domain.errors import NotFound
from registry.store import changelog
from registry.store import tables as t
from registry.store.repository import now_utc
from registry.store.rows import utc


def key_from_row(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        roles=frozenset(row["roles"]),
        secret_sha256=row["secret_sha256"],
        created_at=utc(row["created_at"]),
        created_by=row["created_by"],
        expires_at=utc(row["expires_at"]) if row["expires_at"] else None,
        revoked_at=utc(row["revoked_at"]) if row["revoked_at"] else None,
    )


def _storable(value: Any) -> Any:
    """Text and JSON that every backend stores: PostgreSQL refuses NUL characters in text and in jsonb strings."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


class KeyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, key: ApiKey) -> int:
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.api_keys).values(
                    id=key.id,
                    tenant_id=key.tenant,
                    name=key.name,
                    roles=sorted(key.roles),
                    secret_sha256=key.secret_sha256,
                    created_at=key.created_at,
                    created_by=key.created_by,
                    expires_at=key.expires_at,
                )
            )
            return self._log(conn, key.tenant, key.id, "create")

    def revoke(self, key_id: str, tenant: str | None) -> tuple[ApiKey, int]:
        """Revoke a key of `tenant` (any tenant when None)."""
        with self.engine.begin() as conn:
            stmt = select(t.api_keys).where(t.api_keys.c.id == key_id)
            if tenant is not None:
                stmt = stmt.where(t.api_keys.c.tenant_id == tenant)
            row = conn.execute(stmt.with_for_update()).mappings().first()
            if row is None:
                raise NotFound(f"no API key {key_id!r}; `capreg keys list` shows them")
            if row["revoked_at"] is None:
                conn.execute(update(t.api_keys).where(t.api_keys.c.id == key_id).values(revoked_at=now_utc()))
            seq = self._log(conn, row["tenant_id"], key_id, "revoke")
            return key_from_row(conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).mappings().one()), seq

    def list_keys(self, tenant: str | None) -> list[ApiKey]:
        stmt = select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.id)
        if tenant is not None:
            stmt = stmt.where(t.api_keys.c.tenant_id == tenant)
        with self.engine.connect() as conn:
            return [key_from_row(r) for r in conn.execute(stmt).mappings()]

    def snapshot(self) -> tuple[int, dict[str, ApiKey]]:
        with self.engine.connect() as conn:
            seq = self._last_seq(conn)
            keys = {r["id"]: key_from_row(r) for r in conn.execute(select(t.api_keys)).mappings()}
        return seq, keys

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return self._last_seq(conn)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.api_keys)).scalar_one())

    # -- audit ---------------------------------------------------------------------------------------

    def audit(self, tenant: str, actor: str, action: str, entity: str, entity_id: str, details: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.audit_log).values(
                    at=now_utc(),
                    tenant_id=_storable(tenant)[:63],
                    actor=_storable(actor)[:160],
                    action=_storable(action)[:64],
                    entity=_storable(entity)[:32],
                    entity_id=_storable(entity_id)[:160],  # may hold ignored fields, e.g. a name beside an id
                    details=_storable(json.loads(json.dumps(details, default=str))),
                )
            )

    def list_audit(self, tenant: str | None, limit: int, before_id: int = 0) -> list[dict[str, Any]]:
        stmt = select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
        if tenant is not None:
            stmt = stmt.where(t.audit_log.c.tenant_id == tenant)
        if before_id:
            stmt = stmt.where(t.audit_log.c.id < before_id)
        with self.engine.connect() as conn:
            return [dict(r) | {"at": utc(r["at"])} for r in conn.execute(stmt).mappings()]

    @staticmethod
    def _last_seq(conn: Any) -> int:
        return changelog.last_seq(conn, ("api_key",))

    @staticmethod
    def _log(conn: Any, tenant: str, key_id: str, op: str) -> int:
        return changelog.append(conn, tenant, "api_key", key_id, op)
