"""What the transport tells services about the call in progress, and how a committed write waits for this
process's index within it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

log = logging.getLogger(__name__)

# When the current call must have answered (time.monotonic()). Work that may outlive the answer (a
# committed write waiting for the index) stops waiting a little before, so the caller gets the answer.
call_deadline: ContextVar[float] = ContextVar("capreg_call_deadline", default=float("inf"))
SETTLE_S = 5.0  # how long a write waits for the index before it answers anyway (it is committed)
SETTLE_MARGIN_S = 0.05  # answered this long before the call's deadline, rather than DEADLINE_EXCEEDED


async def settle(sync: Callable[[int], Awaitable[None]], token: int) -> None:
    """Wait until this process's index reflects change `token`, within SETTLE_S and the call's deadline.
    The write is committed either way: on a timeout it answers success and the follower catches up later."""
    wait_s = min(SETTLE_S, call_deadline.get() - time.monotonic() - SETTLE_MARGIN_S)
    try:
        await asyncio.wait_for(sync(token), max(wait_s, 0.0))
    except Exception as exc:
        log.warning("change %d is committed but not yet in this process's index: %s", token, exc)
