"""WatchDiscover: a Discover that answers again whenever its answer changes, so orchestrators need not poll.

The answer depends on the index (agents, leases), the policy and tenant caches, budgets, outcomes and the
serving space, all of which change only through the change-log follower, and on the clock (a lease that
expires). So a watch waits for the follower's next applied batch or for the earliest lease expiry among its
answered matches, waits a coalescing window more (a burst of writes becomes one answer), evaluates the
query again, and sends the answer if its digest differs from the last one sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from registry.domain.errors import InvalidArgument, ResourceExhausted
from registry.domain.models import DiscoverQuery, DiscoverResult
from registry.service.discovery_service import DiscoveryService
from registry.service.follower import ChangeFollower

DEFAULT_COALESCE_S = 0.1
MAX_COALESCE_MS = 10_000
LEASE_SLACK_S = 0.01  # evaluate just after the expiry instant, when the mask already excludes it


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    result: DiscoverResult
    digest: str
    reasons: tuple[str, ...]


def answer_digest(result: DiscoverResult) -> str:
    """What an answer says, not when it was computed: the space and, per match in order, the agent, its
    endpoint and status, the capability and its version, and the score to four places."""
    h = hashlib.sha256(result.vector_space.encode())
    for m in result.matches:
        cap = m.capability
        updated = cap.updated_at.isoformat() if cap.updated_at is not None else ""
        h.update(f"\n{m.agent_id}|{m.endpoint}|{cap.id}|{cap.version}|{updated}|{m.score:.4f}".encode())
    return h.hexdigest()[:32]


class DiscoverWatches:
    """Runs watches for one process; at most `max_watches` at a time."""

    def __init__(self, discovery: DiscoveryService, follower: ChangeFollower, max_watches: int = 1000):
        self._discovery = discovery
        self._follower = follower
        self._max = max_watches
        self.active = 0

    async def watch(
        self, query: DiscoverQuery, *, last_digest: str = "", coalesce_ms: int = 0
    ) -> AsyncIterator[WatchUpdate]:
        if not 0 <= coalesce_ms <= MAX_COALESCE_MS:
            raise InvalidArgument("coalesce_ms", f"must be between 0 and {MAX_COALESCE_MS} (0 means 100)")
        if self.active >= self._max:
            raise ResourceExhausted(
                f"this server already runs {self._max} watches; retry later or on another replica",
                retry_after_s=1.0,
            )
        coalesce_s = coalesce_ms / 1000.0 if coalesce_ms else DEFAULT_COALESCE_S
        self.active += 1
        try:
            async for update in self._updates(query, last_digest, coalesce_s):
                yield update
        finally:
            self.active -= 1

    async def _updates(self, query: DiscoverQuery, last: str, coalesce_s: float) -> AsyncIterator[WatchUpdate]:
        changed = self._follower.applied_event()  # before the position, so no batch slips between
        position = self._follower.position
        result = await self._first(query)
        # The first answer honoured min_seq (later ones are newer anyway) and any exploration coin: a coin
        # tossed again on every re-evaluation would change the answer with nothing changed.
        query = replace(query, min_seq=0, exploration_rate=0.0)
        reasons: tuple[str, ...] = ("initial",)
        while True:
            digest = answer_digest(result)
            if digest != last:
                yield WatchUpdate(result, digest, reasons)
                last = digest
            if await _wait(changed, self._until_lease_expiry(result)):
                await asyncio.sleep(coalesce_s)  # let the rest of a burst land: one answer for all of it
                reasons = tuple(sorted(self._follower.entities_after(position)))
            else:
                reasons = ("lease",)
            changed = self._follower.applied_event()
            position = self._follower.position
            result = await self._discovery.discover(query, record=False)

    async def _first(self, query: DiscoverQuery) -> DiscoverResult:
        """The first evaluation, where a bad question is found: its fields are named within `discover`."""
        try:
            return await self._discovery.discover(query, record=False)
        except InvalidArgument as error:
            field = error.field or "request"
            raise InvalidArgument(f"discover.{field}", error.message.removeprefix(f"{field}: ")) from None

    def _until_lease_expiry(self, result: DiscoverResult) -> float | None:
        expiry = self._discovery.next_lease_expiry(result)
        return None if expiry is None else max(expiry - time.time(), 0.0) + LEASE_SLACK_S


async def _wait(event: asyncio.Event, timeout_s: float | None) -> bool:
    """True when `event` was set, False when `timeout_s` passed first."""
    if timeout_s is None:
        await event.wait()
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
            return True
    return False
