"""Budgets: a limit in USD per period (UTC day, calendar month, or total) for a tenant, a principal or a
project, and reservations that hold money against it until they are committed, released or expire.

Amounts are US dollars (float) in the domain and on the wire; the store keeps them as integer micro-dollars
so that sums and the "fits in what remains" comparison are exact on every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from registry.domain import validation as v
from registry.domain.errors import InvalidArgument

MICROS_PER_USD = 1_000_000
MAX_LIMIT_USD = 1_000_000_000.0  # 10^15 micro-dollars: far inside a 64-bit integer, even summed
MAX_AMOUNT_USD = MAX_LIMIT_USD
MIN_AMOUNT_USD = 1.0 / MICROS_PER_USD
MIN_TTL_S = 1.0
MAX_TTL_S = 24 * 3600.0
DEFAULT_TTL_S = 300.0
# The period of a TOTAL budget: one, starting at the epoch.
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)


class BudgetScope(StrEnum):
    TENANT = "tenant"
    PRINCIPAL = "principal"
    PROJECT = "project"


class BudgetPeriod(StrEnum):
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


class ReservationState(StrEnum):
    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


# -- money and periods -------------------------------------------------------------------------------


def to_micros(usd: float) -> int:
    """Dollars to integer micro-dollars, to the nearest one (0.1 + 0.2 is 300000, not 300000.00000000006)."""
    return round(usd * MICROS_PER_USD)


def to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def period_start(period: BudgetPeriod, now: datetime) -> datetime:
    """The start of the period containing `now`: 00:00 UTC today, 00:00 UTC on the 1st, or the epoch."""
    now = now.astimezone(UTC)
    if period is BudgetPeriod.DAY:
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period is BudgetPeriod.MONTH:
        return datetime(now.year, now.month, 1, tzinfo=UTC)
    return TOTAL_PERIOD_START


def period_end(period: BudgetPeriod, start: datetime) -> datetime | None:
    """The first instant after the period that starts at `start`; None for TOTAL, which never ends."""
    if period is BudgetPeriod.DAY:
        return start + timedelta(days=1)
    if period is BudgetPeriod.MONTH:
        return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return None


# -- domain objects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One period of a budget: what committed reservations spent and live ones hold."""

    period_start: datetime
    period_end: datetime | None
    committed_usd: float = 0.0
    reserved_usd: float = 0.0
    remaining_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Budget:
    tenant: str
    name: str
    limit_usd: float
    scope: BudgetScope = BudgetScope.TENANT
    scope_id: str = ""
    period: BudgetPeriod = BudgetPeriod.MONTH
    # Set by the store.
    id: str = ""
    generation: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    usage: BudgetUsage | None = None  # the current period, on every budget the store returns


@dataclass(frozen=True, slots=True)
class BudgetRef:
    """Names a budget by id, or by tenant and name."""

    id: str = ""
    tenant: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    budget_id: str
    tenant: str
    amount_usd: float
    state: ReservationState
    expires_at: datetime
    period_start: datetime
    actual_usd: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BudgetWrite:
    budget: Budget | None  # None after a delete
    seq: int  # the change_log sequence number: a consistency token


@dataclass(frozen=True, slots=True)
class ReservationWrite:
    reservation: Reservation
    budget: Budget
    seq: int


# -- validation --------------------------------------------------------------------------------------


def check_money(value: float, field: str, low: float, high: float) -> None:
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(field, "must be a finite number of US dollars")
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g} US dollars, got {value:g}")


def check_ttl(ttl_s: float, field: str = "ttl") -> None:
    if math.isnan(ttl_s) or math.isinf(ttl_s):
        raise InvalidArgument(field, "must be a finite duration")
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise InvalidArgument(field, f"must be between {MIN_TTL_S:g} s and {MAX_TTL_S:g} s (24 h), got {ttl_s:g} s")


def check_amount(amount_usd: float, field: str = "amount_usd") -> None:
    check_money(amount_usd, field, 0.0, MAX_AMOUNT_USD)
    if to_micros(amount_usd) < 1:
        raise InvalidArgument(field, f"must be at least {MIN_AMOUNT_USD:.6f} US dollars (one micro-dollar)")


def check_actual(actual_usd: float, field: str = "actual_usd") -> None:
    check_money(actual_usd, field, 0.0, MAX_AMOUNT_USD)


def check_limit(limit_usd: float, field: str = "limit_usd") -> None:
    check_money(limit_usd, field, 0.0, MAX_LIMIT_USD)


def validate_budget(budget: Budget, field: str = "budget") -> None:
    """Raise InvalidArgument for the first rule a new budget breaks (its tenant is already resolved)."""
    v.check_name(budget.name, f"{field}.name")
    check_limit(budget.limit_usd, f"{field}.limit_usd")
    if budget.scope is BudgetScope.TENANT:
        if budget.scope_id:
            raise InvalidArgument(f"{field}.scope_id", "must be empty for a TENANT budget (the tenant is the scope)")
    else:
        if not budget.scope_id:
            raise InvalidArgument(
                f"{field}.scope_id", f"names the {budget.scope.value} a {budget.scope.name} budget is for"
            )
        v.check_name(budget.scope_id, f"{field}.scope_id")


def validate_budget_ref(ref: BudgetRef, field: str = "budget") -> BudgetRef:
    """An id, or a name; the tenant defaults to 'default' either way (it bounds what an id may find)."""
    tenant = v.tenant_or_default(ref.tenant, f"{field}.tenant")
    if ref.id:
        v.check_id(ref.id, f"{field}.id")
        return BudgetRef(id=ref.id, tenant=tenant)
    if not ref.name:
        raise InvalidArgument(field, "give an id, or a name (and a tenant unless it is 'default')")
    v.check_name(ref.name, f"{field}.name")
    return BudgetRef(tenant=tenant, name=ref.name)
