"""Budgets and reservations, per tenant; also Discover's BudgetLimiter and the sweeper of expired holds.

A caller only ever sees and uses budgets of its own tenant: an id of another tenant's budget or
reservation is NotFound, exactly like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from registry.domain import budget as b
from registry.domain import validation as v
from registry.domain.budget import Budget, BudgetRef, BudgetWrite, Reservation, ReservationWrite
from registry.domain.errors import DomainError
from registry.domain.models import Caller
from registry.store.budgets import BudgetStore
from registry.telemetry import current

log = logging.getLogger(__name__)

DEFAULT_SWEEP_INTERVAL_S = 15.0


class BudgetService:
    """Implements registry.domain.ports.BudgetLimiter."""

    def __init__(self, store: BudgetStore, *, sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S):
        self._store = store
        self._sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    # -- budgets -------------------------------------------------------------------------------------

    async def create(self, budget: Budget) -> BudgetWrite:
        budget = replace(budget, tenant=v.tenant_or_default(budget.tenant, "budget.tenant"))
        b.validate_budget(budget)
        return await asyncio.to_thread(self._store.create, budget)

    async def get(self, ref: BudgetRef) -> Budget:
        return await asyncio.to_thread(self._store.get, b.validate_budget_ref(ref))

    async def list(self, tenant: str) -> list[Budget]:
        return await asyncio.to_thread(self._store.list_budgets, v.tenant_or_default(tenant, "tenant"))

    async def update_limit(self, ref: BudgetRef, limit_usd: float, expected_generation: int = 0) -> BudgetWrite:
        ref = b.validate_budget_ref(ref)
        b.check_limit(limit_usd)
        v.check_generation(expected_generation, "expected_generation")
        return await asyncio.to_thread(self._store.update_limit, ref, limit_usd, expected_generation)

    async def delete(self, ref: BudgetRef, expected_generation: int = 0) -> BudgetWrite:
        ref = b.validate_budget_ref(ref)
        v.check_generation(expected_generation, "expected_generation")
        return await asyncio.to_thread(self._store.delete, ref, expected_generation)

    async def remaining_usd(self, caller: Caller, budget_id: str) -> float:
        """BudgetLimiter: what the budget has left in its current period, for Discover."""
        tenant = v.tenant_or_default(caller.tenant, "tenant")
        v.check_id(budget_id, "budget_id")
        return await asyncio.to_thread(self._store.remaining_usd, tenant, budget_id)

    # -- reservations --------------------------------------------------------------------------------

    async def reserve(
        self, caller: Caller, budget_id: str, amount_usd: float, ttl_s: float = b.DEFAULT_TTL_S
    ) -> ReservationWrite:
        tenant = v.tenant_or_default(caller.tenant, "tenant")
        v.check_id(budget_id, "budget_id")
        b.check_amount(amount_usd)
        b.check_ttl(ttl_s)
        try:
            written = await asyncio.to_thread(self._store.reserve, tenant, budget_id, amount_usd, ttl_s)
        except DomainError as error:
            current().reservations.add(1, {"operation": "reserve", "result": error.code.value})
            raise
        current().reservations.add(1, {"operation": "reserve", "result": "ok"})
        return written

    async def commit(self, caller: Caller, reservation_id: str, actual_usd: float | None = None) -> ReservationWrite:
        tenant = v.tenant_or_default(caller.tenant, "tenant")
        v.check_id(reservation_id, "reservation_id")
        if actual_usd is not None:
            b.check_actual(actual_usd)
        written = await asyncio.to_thread(self._store.commit, tenant, reservation_id, actual_usd)
        current().reservations.add(1, {"operation": "commit", "result": "ok"})
        return written

    async def release(self, caller: Caller, reservation_id: str) -> ReservationWrite:
        tenant = v.tenant_or_default(caller.tenant, "tenant")
        v.check_id(reservation_id, "reservation_id")
        written = await asyncio.to_thread(self._store.release, tenant, reservation_id)
        current().reservations.add(1, {"operation": "release", "result": "ok"})
        return written

    async def get_reservation(self, caller: Caller, reservation_id: str) -> Reservation:
        tenant = v.tenant_or_default(caller.tenant, "tenant")
        v.check_id(reservation_id, "reservation_id")
        return await asyncio.to_thread(self._store.get_reservation, tenant, reservation_id)

    # -- the sweeper ---------------------------------------------------------------------------------

    async def sweep_once(self) -> int:
        """Release every expired hold (of up to 100 budgets); returns how many."""
        return await asyncio.to_thread(self._store.release_expired)

    def start_sweeper(self) -> None:
        """Release expired holds every `sweep_interval_s` seconds, for budgets nobody reads or writes
        (those that are used release their expired holds themselves)."""
        if self._sweeper is None:
            self._stopping = asyncio.Event()
            self._sweeper = asyncio.create_task(self._sweep_forever(self._stopping), name="capreg-budget-sweeper")

    async def stop_sweeper(self) -> None:
        """Stop, letting a sweep in progress finish its transaction."""
        task, stopping = self._sweeper, self._stopping
        self._sweeper = self._stopping = None
        if task is None or stopping is None:
            return
        stopping.set()
        await task

    @property
    def sweeping(self) -> bool:
        return self._sweeper is not None and not self._sweeper.done()

    async def _sweep_forever(self, stopping: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._sweep_interval_s)
            if stopping.is_set():
                return
            try:
                released = await self.sweep_once()
            except Exception:
                log.exception(
                    "releasing expired budget reservations failed; trying again in %g s", self._sweep_interval_s
                )
            else:
                if released:
                    log.info("released %d expired budget reservations", released)
