"""Interfaces one use case needs from another part of the registry, so services stay decoupled."""

from __future__ import annotations

from typing import Protocol

from registry.domain.models import Caller


class BudgetLimiter(Protocol):
    async def remaining_usd(self, caller: Caller, budget_id: str) -> float:
        """Money left in the budget's current period (limit - committed - held reservations).

        Raises NotFound when the budget does not exist or the caller's tenant may not use it."""
        ...
