"""What the transport tells services about the call in progress."""

from __future__ import annotations

from contextvars import ContextVar

# When the current call must have answered (time.monotonic()). Work that may outlive the answer (a
# committed write waiting for the index) stops waiting a little before, so the caller gets the answer.
call_deadline: ContextVar[float] = ContextVar("capreg_call_deadline", default=float("inf"))
