"""OutcomeService: proto -> domain, report, answer. Errors go to the interceptor."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from capreg.v1 import outcome_pb2, outcome_pb2_grpc

from registry.domain.validation import check_name
from registry.service.outcomes import OutcomeReport, OutcomeService
from registry.transport.auth import scoped_tenant

Context = grpc.aio.ServicerContext[Any, Any]


class OutcomeServicer(outcome_pb2_grpc.OutcomeServiceServicer):
    def __init__(self, service: OutcomeService):
        self._service = service

    async def ReportOutcome(
        self, request: outcome_pb2.ReportOutcomeRequest, context: Context
    ) -> outcome_pb2.ReportOutcomeResponse:
        outcome_id, seq = await self._service.report(report_from_proto(request))
        return outcome_pb2.ReportOutcomeResponse(outcome_id=outcome_id, consistency_token=seq)


def report_from_proto(msg: outcome_pb2.ReportOutcomeRequest) -> OutcomeReport:
    which = msg.WhichOneof("task")
    space = msg.vector_space
    if which == "vector" and msg.vector.space:
        check_name(msg.vector.space, "vector.space")
        space = msg.vector.space
    return OutcomeReport(
        tenant=scoped_tenant(msg.tenant),
        capability_id=msg.capability_id,
        discover_id=msg.discover_id if which == "discover_id" else None,
        text=msg.text if which == "text" else None,
        vector=np.asarray(msg.vector.values, dtype=np.float32) if which == "vector" else None,
        vector_space=space,
        success=msg.success if msg.HasField("success") else None,
        score=msg.score if msg.HasField("score") else None,
        latency_ms=msg.latency_ms if msg.HasField("latency_ms") else None,
        input_tokens=msg.input_tokens if msg.HasField("input_tokens") else None,
        output_tokens=msg.output_tokens if msg.HasField("output_tokens") else None,
        cost_usd=msg.cost_usd if msg.HasField("cost_usd") else None,
    )
