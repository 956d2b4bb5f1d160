"""BudgetService over gRPC: a thin servicer and its proto <-> domain conversions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import grpc
from capreg.v1 import budget_pb2, budget_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from registry.domain.budget import (
    DEFAULT_TTL_S,
    Budget,
    BudgetPeriod,
    BudgetRef,
    BudgetScope,
    Reservation,
    ReservationState,
    ReservationWrite,
)
from registry.domain.errors import InvalidArgument
from registry.domain.models import Caller
from registry.service.budget_service import BudgetService
from registry.transport.auth import scoped_tenant

Context = grpc.aio.ServicerContext[Any, Any]

SCOPE_FROM_PROTO = {
    budget_pb2.BUDGET_SCOPE_TENANT: BudgetScope.TENANT,
    budget_pb2.BUDGET_SCOPE_PRINCIPAL: BudgetScope.PRINCIPAL,
    budget_pb2.BUDGET_SCOPE_PROJECT: BudgetScope.PROJECT,
}
SCOPE_TO_PROTO = {scope: number for number, scope in SCOPE_FROM_PROTO.items()}
PERIOD_FROM_PROTO = {
    budget_pb2.BUDGET_PERIOD_DAY: BudgetPeriod.DAY,
    budget_pb2.BUDGET_PERIOD_MONTH: BudgetPeriod.MONTH,
    budget_pb2.BUDGET_PERIOD_TOTAL: BudgetPeriod.TOTAL,
}
PERIOD_TO_PROTO = {period: number for number, period in PERIOD_FROM_PROTO.items()}
STATE_TO_PROTO = {
    ReservationState.HELD: budget_pb2.RESERVATION_STATE_HELD,
    ReservationState.COMMITTED: budget_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: budget_pb2.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: budget_pb2.RESERVATION_STATE_EXPIRED,
}


# -- conversions -------------------------------------------------------------------------------------


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def scope_from_proto(value: int, field: str) -> BudgetScope:
    if value == budget_pb2.BUDGET_SCOPE_UNSPECIFIED:
        return BudgetScope.TENANT
    try:
        return SCOPE_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown budget scope {value}; use TENANT, PRINCIPAL or PROJECT") from None


def period_from_proto(value: int, field: str) -> BudgetPeriod:
    if value == budget_pb2.BUDGET_PERIOD_UNSPECIFIED:
        return BudgetPeriod.MONTH
    try:
        return PERIOD_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown budget period {value}; use DAY, MONTH or TOTAL") from None


def budget_from_proto(msg: budget_pb2.Budget, field: str = "budget") -> Budget:
    """A new budget as the caller describes it; output-only fields are ignored."""
    return Budget(
        tenant=msg.tenant,
        name=msg.name,
        limit_usd=msg.limit_usd,
        scope=scope_from_proto(msg.scope, f"{field}.scope"),
        scope_id=msg.scope_id,
        period=period_from_proto(msg.period, f"{field}.period"),
    )


def budget_to_proto(budget: Budget) -> budget_pb2.Budget:
    msg = budget_pb2.Budget(
        id=budget.id,
        tenant=budget.tenant,
        name=budget.name,
        scope=SCOPE_TO_PROTO[budget.scope],
        scope_id=budget.scope_id,
        period=PERIOD_TO_PROTO[budget.period],
        limit_usd=budget.limit_usd,
        generation=budget.generation,
        create_time=_timestamp(budget.created_at),
        update_time=_timestamp(budget.updated_at),
    )
    if budget.usage is not None:
        usage = budget.usage
        msg.period_start.FromDatetime(usage.period_start)
        if usage.period_end is not None:
            msg.period_end.FromDatetime(usage.period_end)
        msg.committed_usd = usage.committed_usd
        msg.reserved_usd = usage.reserved_usd
        msg.remaining_usd = usage.remaining_usd
    return msg


def ref_from_proto(msg: budget_pb2.BudgetRef) -> BudgetRef:
    return BudgetRef(id=msg.id, tenant=msg.tenant, name=msg.name)


def ttl_from_proto(msg: budget_pb2.ReserveRequest) -> float:
    if not msg.HasField("ttl"):
        return DEFAULT_TTL_S
    return msg.ttl.seconds + msg.ttl.nanos / 1e9


def reservation_to_proto(reservation: Reservation) -> budget_pb2.Reservation:
    msg = budget_pb2.Reservation(
        id=reservation.id,
        budget_id=reservation.budget_id,
        tenant=reservation.tenant,
        amount_usd=reservation.amount_usd,
        state=STATE_TO_PROTO[reservation.state],
        expires_at=_timestamp(reservation.expires_at),
        period_start=_timestamp(reservation.period_start),
        create_time=_timestamp(reservation.created_at),
        update_time=_timestamp(reservation.updated_at),
    )
    if reservation.actual_usd is not None:
        msg.actual_usd = reservation.actual_usd
    return msg


def _reservation_response(result: ReservationWrite) -> budget_pb2.ReservationResponse:
    return budget_pb2.ReservationResponse(
        reservation=reservation_to_proto(result.reservation),
        budget=budget_to_proto(result.budget),
        consistency_token=result.seq,
    )


# -- the servicer ------------------------------------------------------------------------------------


def _scoped_budget(budget: Budget) -> Budget:
    return replace(budget, tenant=scoped_tenant(budget.tenant, "budget.tenant"))


def _scoped_ref(ref: BudgetRef) -> BudgetRef:
    return replace(ref, tenant=scoped_tenant(ref.tenant, "budget.tenant"))


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    def __init__(self, service: BudgetService):
        self._service = service

    async def CreateBudget(
        self, request: budget_pb2.CreateBudgetRequest, context: Context
    ) -> budget_pb2.BudgetResponse:
        result = await self._service.create(_scoped_budget(budget_from_proto(request.budget)))
        assert result.budget is not None
        return budget_pb2.BudgetResponse(budget=budget_to_proto(result.budget), consistency_token=result.seq)

    async def GetBudget(self, request: budget_pb2.GetBudgetRequest, context: Context) -> budget_pb2.GetBudgetResponse:
        budget = await self._service.get(_scoped_ref(ref_from_proto(request.budget)))
        return budget_pb2.GetBudgetResponse(budget=budget_to_proto(budget))

    async def ListBudgets(
        self, request: budget_pb2.ListBudgetsRequest, context: Context
    ) -> budget_pb2.ListBudgetsResponse:
        budgets = await self._service.list(scoped_tenant(request.tenant))
        return budget_pb2.ListBudgetsResponse(budgets=[budget_to_proto(b) for b in budgets])

    async def UpdateBudget(
        self, request: budget_pb2.UpdateBudgetRequest, context: Context
    ) -> budget_pb2.BudgetResponse:
        result = await self._service.update_limit(
            _scoped_ref(ref_from_proto(request.budget)), request.limit_usd, request.expected_generation
        )
        assert result.budget is not None
        return budget_pb2.BudgetResponse(budget=budget_to_proto(result.budget), consistency_token=result.seq)

    async def DeleteBudget(
        self, request: budget_pb2.DeleteBudgetRequest, context: Context
    ) -> budget_pb2.DeleteBudgetResponse:
        result = await self._service.delete(_scoped_ref(ref_from_proto(request.budget)), request.expected_generation)
        return budget_pb2.DeleteBudgetResponse(consistency_token=result.seq)

    async def Reserve(self, request: budget_pb2.ReserveRequest, context: Context) -> budget_pb2.ReservationResponse:
        result = await self._service.reserve(
            Caller(tenant=scoped_tenant(request.tenant)), request.budget_id, request.amount_usd, ttl_from_proto(request)
        )
        return _reservation_response(result)

    async def Commit(self, request: budget_pb2.CommitRequest, context: Context) -> budget_pb2.ReservationResponse:
        actual = request.actual_usd if request.HasField("actual_usd") else None
        result = await self._service.commit(
            Caller(tenant=scoped_tenant(request.tenant)), request.reservation_id, actual
        )
        return _reservation_response(result)

    async def Release(self, request: budget_pb2.ReleaseRequest, context: Context) -> budget_pb2.ReservationResponse:
        result = await self._service.release(Caller(tenant=scoped_tenant(request.tenant)), request.reservation_id)
        return _reservation_response(result)

    async def GetReservation(
        self, request: budget_pb2.GetReservationRequest, context: Context
    ) -> budget_pb2.GetReservationResponse:
        reservation = await self._service.get_reservation(
            Caller(tenant=scoped_tenant(request.tenant)), request.reservation_id
        )
        return budget_pb2.GetReservationResponse(reservation=reservation_to_proto(reservation))
