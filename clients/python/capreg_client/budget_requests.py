"""BudgetService request builders shared by the sync and asyncio clients."""

from __future__ import annotations

from capreg.v1 import budget_pb2
from google.protobuf.duration_pb2 import Duration

PERIOD_NAMES = {
    "day": budget_pb2.BUDGET_PERIOD_DAY,
    "month": budget_pb2.BUDGET_PERIOD_MONTH,
    "total": budget_pb2.BUDGET_PERIOD_TOTAL,
}
SCOPE_NAMES = {
    "tenant": budget_pb2.BUDGET_SCOPE_TENANT,
    "principal": budget_pb2.BUDGET_SCOPE_PRINCIPAL,
    "project": budget_pb2.BUDGET_SCOPE_PROJECT,
}


def period_value(period: str | int) -> budget_pb2.BudgetPeriod.ValueType:
    if isinstance(period, int):
        return budget_pb2.BudgetPeriod.ValueType(period)
    try:
        return PERIOD_NAMES[period.lower()]
    except KeyError:
        raise ValueError(f"unknown period {period!r}; use one of {sorted(PERIOD_NAMES)}") from None


def scope_value(scope: str | int) -> budget_pb2.BudgetScope.ValueType:
    if isinstance(scope, int):
        return budget_pb2.BudgetScope.ValueType(scope)
    try:
        return SCOPE_NAMES[scope.lower()]
    except KeyError:
        raise ValueError(f"unknown scope {scope!r}; use one of {sorted(SCOPE_NAMES)}") from None


def budget_ref(id: str = "", tenant: str = "", name: str = "") -> budget_pb2.BudgetRef:
    return budget_pb2.BudgetRef(id=id, tenant=tenant, name=name)


def create_budget(
    name: str,
    limit_usd: float,
    *,
    period: str | int = "month",
    scope: str | int = "tenant",
    scope_id: str = "",
    tenant: str = "",
) -> budget_pb2.CreateBudgetRequest:
    return budget_pb2.CreateBudgetRequest(
        budget=budget_pb2.Budget(
            tenant=tenant,
            name=name,
            limit_usd=limit_usd,
            period=period_value(period),
            scope=scope_value(scope),
            scope_id=scope_id,
        )
    )


def reserve(
    budget_id: str, amount_usd: float, *, ttl_s: float | None = None, tenant: str = ""
) -> budget_pb2.ReserveRequest:
    request = budget_pb2.ReserveRequest(tenant=tenant, budget_id=budget_id, amount_usd=amount_usd)
    if ttl_s is not None:
        ttl = Duration()
        ttl.FromNanoseconds(round(ttl_s * 1e9))
        request.ttl.CopyFrom(ttl)
    return request


def commit(reservation_id: str, actual_usd: float | None = None, *, tenant: str = "") -> budget_pb2.CommitRequest:
    request = budget_pb2.CommitRequest(tenant=tenant, reservation_id=reservation_id)
    if actual_usd is not None:
        request.actual_usd = actual_usd
    return request
