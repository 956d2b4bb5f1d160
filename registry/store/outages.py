"""Which database errors mean "the database is away right now" (restarting, refusing connections, dropped
them), as opposed to "this query failed". Kept in the store layer, beside the driver it inspects; the
transport turns the answer into UNAVAILABLE with a retry hint."""

from __future__ import annotations

import psycopg
import sqlalchemy.exc

from registry.domain.errors import Unavailable

DATABASE_RETRY_AFTER_S = 1.0
# PostgreSQL SQLSTATEs that mean "the server is going away or not there yet", not "your query failed":
# admin_shutdown (also pg_terminate_backend), crash_shutdown, cannot_connect_now (starting up, shutting
# down, recovering) and too_many_connections. Class 08 (connection exceptions) counts too.
_PG_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_UNAVAILABLE_PHRASES = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "connection refused",
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection timeout expired",
)


def _connectivity_reason(error: BaseException) -> str | None:
    """Why `error` means the database cannot be reached at the moment, or None when it means anything else."""
    if isinstance(error, sqlalchemy.exc.TimeoutError):  # the pool had no connection to give in time
        return "no database connection became free in time"
    original: BaseException | None = error
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return "the connection to the database was lost"
        original = error.orig
    if isinstance(original, psycopg.OperationalError):
        state = original.sqlstate
        # Without a SQLSTATE the failure happened below SQL: refused, reset, timed out while connecting.
        if state is None or state.startswith("08") or state in _PG_UNAVAILABLE_SQLSTATES:
            return "the database is unreachable"
    if isinstance(original, psycopg.OperationalError | sqlalchemy.exc.OperationalError):
        text = str(original).lower()
        if any(phrase in text for phrase in _UNAVAILABLE_PHRASES):
            return "the database is unreachable"
    return None


def database_unavailable(error: BaseException) -> Unavailable | None:
    """The Unavailable (with a retry hint) that a database connectivity failure becomes; None for any other
    error, which keeps its own mapping. Follows `raise ... from` causes."""
    current: BaseException | None = error
    for _ in range(8):  # causes chain rarely runs deeper; a bound keeps a cycle from looping
        if current is None:
            return None
        reason = _connectivity_reason(current)
        if reason is not None:
            return Unavailable(
                f"{reason} (restarting, or connections dropped); retry in {DATABASE_RETRY_AFTER_S:g} s with "
                "backoff. A write that failed this way may or may not have been applied: read it back or "
                "send it again (RegisterAgent is an idempotent upsert; use expected_generation to detect races)",
                retry_after_s=DATABASE_RETRY_AFTER_S,
            )
        current = current.__cause__
    return None
