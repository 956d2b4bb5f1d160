"""KeyService and AuditService over gRPC."""

from __future__ import annotations

import json
from typing import Any

import grpc
from capreg.v1 import keys_pb2, keys_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from registry.domain.auth import ApiKey
from registry.service.key_service import KeyService
from registry.transport.auth import current_identity
from registry.transport.convert import datetime_from_proto, timestamp

Context = grpc.aio.ServicerContext[Any, Any]


def key_to_proto(key: ApiKey) -> keys_pb2.ApiKey:
    return keys_pb2.ApiKey(
        id=key.id,
        tenant=key.tenant,
        name=key.name,
        roles=sorted(key.roles),
        create_time=timestamp(key.created_at),
        expire_time=timestamp(key.expires_at),
        revoke_time=timestamp(key.revoked_at),
        created_by=key.created_by,
    )


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, service: KeyService):
        self._service = service

    async def CreateKey(self, request: keys_pb2.CreateKeyRequest, context: Context) -> keys_pb2.CreateKeyResponse:
        expires = datetime_from_proto(request.expire_time, "expire_time") if request.HasField("expire_time") else None
        key, token, seq = await self._service.create(
            current_identity(), request.tenant, request.name, list(request.roles), expires
        )
        return keys_pb2.CreateKeyResponse(key=key_to_proto(key), token=token, consistency_token=seq)

    async def ListKeys(self, request: keys_pb2.ListKeysRequest, context: Context) -> keys_pb2.ListKeysResponse:
        keys = await self._service.list_keys(current_identity(), request.tenant)
        return keys_pb2.ListKeysResponse(keys=[key_to_proto(k) for k in keys])

    async def RevokeKey(self, request: keys_pb2.RevokeKeyRequest, context: Context) -> keys_pb2.RevokeKeyResponse:
        key, seq = await self._service.revoke(current_identity(), request.id)
        return keys_pb2.RevokeKeyResponse(key=key_to_proto(key), consistency_token=seq)


class AuditServicer(keys_pb2_grpc.AuditServiceServicer):
    def __init__(self, service: KeyService):
        self._service = service

    async def ListAudit(self, request: keys_pb2.ListAuditRequest, context: Context) -> keys_pb2.ListAuditResponse:
        rows = await self._service.list_audit(current_identity(), request.tenant, request.limit, request.before_id)
        entries = []
        for row in rows:
            at = Timestamp()
            at.FromDatetime(row["at"])
            entries.append(
                keys_pb2.AuditEntry(
                    id=row["id"], time=at, tenant=row["tenant_id"], actor=row["actor"], action=row["action"],
                    entity=row["entity"], entity_id=row["entity_id"], details_json=json.dumps(row["details"]),
                )
            )  # fmt: skip
        return keys_pb2.ListAuditResponse(entries=entries)
