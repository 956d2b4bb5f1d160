"""Transactions PostgreSQL may roll back under contention, and how they are run again."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError

log = logging.getLogger(__name__)
DEADLOCK_RETRIES = 5
CONFLICT_RETRIES = 3
RETRYABLE_SQLSTATES = {"40P01", "40001"}  # PostgreSQL: deadlock detected, serialization failure
P = ParamSpec("P")
R = TypeVar("R")


def retry_deadlocks(method: Callable[P, R]) -> Callable[P, R]:
    """Run the whole transaction again when PostgreSQL chose it as a deadlock victim (it was rolled back)."""

    @functools.wraps(method)
    def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(DEADLOCK_RETRIES):
            try:
                return method(*args, **kwargs)
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES or attempt == DEADLOCK_RETRIES - 1:
                    raise
                log.warning("transaction %s was a deadlock victim; retrying it", method.__name__)
        raise AssertionError("unreachable")

    return retrying


def retry_conflicts(attempt: Callable[[], R], conflict: Callable[[IntegrityError], Exception] | None = None) -> R:
    """Run `attempt` (a whole transaction) again after a unique-key conflict: a concurrent writer inserted the
    same key first, and the next attempt sees its row. After the last attempt `conflict(error)` is raised, or
    the IntegrityError itself when there is no `conflict`."""
    for n in range(CONFLICT_RETRIES):
        try:
            return attempt()
        except IntegrityError as exc:
            if n == CONFLICT_RETRIES - 1:
                if conflict is None:
                    raise
                raise conflict(exc) from exc
    raise AssertionError("unreachable")
