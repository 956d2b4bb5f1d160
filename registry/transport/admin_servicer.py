"""AdminService: proto <-> AdminService."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
from capreg.v1 import admin_pb2, admin_pb2_grpc

from registry.domain.models import SpaceState
from registry.service.admin_service import AdminService, CompareTask, SpaceStatus
from registry.transport.convert import timestamp

INSTANCE = f"{socket.gethostname()}:{os.getpid()}"
Context = grpc.aio.ServicerContext[Any, Any]
STATE_TO_PROTO = {
    SpaceState.BUILDING: admin_pb2.SPACE_STATE_BUILDING,
    SpaceState.READY: admin_pb2.SPACE_STATE_READY,
    SpaceState.SERVING: admin_pb2.SPACE_STATE_SERVING,
    SpaceState.RETIRED: admin_pb2.SPACE_STATE_RETIRED,
    SpaceState.FAILED: admin_pb2.SPACE_STATE_FAILED,
}
DEFAULT_BATCH = 64
DEFAULT_K = 5


def space_to_proto(status: SpaceStatus) -> admin_pb2.Space:
    space = status.space
    shadow = status.shadow
    return admin_pb2.Space(
        name=space.name,
        model=space.model,
        model_revision=space.model_revision,
        weights_sha256=space.weights_sha256,
        template=space.template,
        dim=space.dim,
        metric=space.metric,
        state=STATE_TO_PROTO[SpaceState(space.state)],
        create_time=timestamp(space.created_at),
        ready_time=timestamp(space.ready_at),
        serving_time=timestamp(space.serving_at),
        retire_time=timestamp(space.retired_at),
        fail_time=timestamp(space.failed_at),
        error=space.error,
        previous_serving=status.previous_serving,
        shadow_fraction=space.shadow_fraction,
        capabilities_total=status.coverage.total,
        capabilities_embedded=status.coverage.embedded,
        live_here=status.live_here,
        indexed_here=status.indexed,
        shadow=admin_pb2.ShadowStats(
            samples=shadow.tasks if shadow else 0,
            overlap_at_k=shadow.overlap if shadow else 0.0,
            rank_correlation=shadow.correlation if shadow else 0.0,
            errors=status.shadow_errors,
            rank_correlation_tasks=shadow.correlation_tasks if shadow else 0,
        ),
        consistency_token=status.consistency_token,
    )


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
            instance=INSTANCE,
        )

    async def CreateSpace(self, request: admin_pb2.CreateSpaceRequest, context: Context) -> admin_pb2.Space:
        return space_to_proto(await self._service.create_space(request.name, request.model, request.template))

    async def GetSpace(self, request: admin_pb2.GetSpaceRequest, context: Context) -> admin_pb2.Space:
        return space_to_proto(await self._service.get_space(request.name))

    async def ListSpaces(self, request: admin_pb2.ListSpacesRequest, context: Context) -> admin_pb2.ListSpacesResponse:
        return admin_pb2.ListSpacesResponse(spaces=[space_to_proto(s) for s in await self._service.list_spaces()])

    async def BackfillSpace(
        self, request: admin_pb2.BackfillSpaceRequest, context: Context
    ) -> AsyncIterator[admin_pb2.BackfillProgress]:
        async for progress in self._service.backfill(request.name, request.batch_size or DEFAULT_BATCH):
            yield admin_pb2.BackfillProgress(
                space=progress.space,
                done=progress.done,
                total=progress.total,
                rate_per_s=progress.rate_per_s,
                eta_s=progress.eta_s,
                state=STATE_TO_PROTO[SpaceState(progress.state)],
                consistency_token=progress.consistency_token,
            )

    async def CompareSpaces(
        self, request: admin_pb2.CompareSpacesRequest, context: Context
    ) -> admin_pb2.CompareSpacesResponse:
        tasks = [CompareTask(t.text, tuple(t.expected)) for t in request.tasks]
        k = request.k or DEFAULT_K
        report = await self._service.compare(
            request.old, request.new, tasks, k, request.tenant or "default", request.recent
        )
        c = report.comparison
        return admin_pb2.CompareSpacesResponse(
            old=report.old,
            new=report.new,
            tasks=c.tasks,
            labelled=c.labelled,
            k=k,
            overlap_at_k=c.overlap,
            rank_correlation=c.correlation,
            rank_correlation_tasks=c.correlation_tasks,
            old_accuracy=admin_pb2.SpaceAccuracy(top1=c.accuracy("old", 1), top5=c.accuracy("old", 5)),
            new_accuracy=admin_pb2.SpaceAccuracy(top1=c.accuracy("new", 1), top5=c.accuracy("new", 5)),
        )

    async def SetShadow(self, request: admin_pb2.SetShadowRequest, context: Context) -> admin_pb2.Space:
        return space_to_proto(await self._service.set_shadow(request.name, request.fraction))

    async def PromoteSpace(self, request: admin_pb2.PromoteSpaceRequest, context: Context) -> admin_pb2.Space:
        return space_to_proto(await self._service.promote(request.name))

    async def RollbackSpace(self, request: admin_pb2.RollbackSpaceRequest, context: Context) -> admin_pb2.Space:
        return space_to_proto(await self._service.rollback())

    async def RetireSpace(self, request: admin_pb2.RetireSpaceRequest, context: Context) -> admin_pb2.Space:
        return space_to_proto(await self._service.retire(request.name))
