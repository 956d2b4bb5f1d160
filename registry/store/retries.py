"""Transactions PostgreSQL may roll back under contention, and how they are run again."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)
DEADLOCK_RETRIES = 5
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
