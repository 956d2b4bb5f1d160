"""AdminService: proto <-> AdminService."""

from __future__ import annotations

from typing import Any

import grpc
from capreg.v1 import admin_pb2, admin_pb2_grpc

from registry.service.admin_service import AdminService
from registry.transport.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, service: AdminService):
        self._service = service

    async def GetIndexStatus(self, request: admin_pb2.GetIndexStatusRequest, context: Context) -> admin_pb2.IndexStatus:
        status = await self._service.index_status()
        return admin_pb2.IndexStatus(
            vector_space=status.vector_space,
            watermark=status.watermark,
            log_head=status.log_head,
            capabilities=status.capabilities,
            digest=status.digest,
            ready=status.ready,
            startup_source=status.startup.source,
            startup_reason=status.startup.reason,
            startup_seconds=status.startup.seconds,
            snapshot_watermark=status.snapshot_watermark,
            snapshot_time=timestamp(status.snapshot_time),
            snapshot_error=status.snapshot_error,
            follower_error=status.follower_error,
            changes_applied=status.changes_applied,
        )
