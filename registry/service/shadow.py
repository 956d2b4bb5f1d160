"""Shadow traffic: a configurable share of live text Discovers is also run against a candidate vector
space, after the answer has gone, and the two answers are compared (overlap@k, rank correlation). The
candidate is searched DEPTH deep, so the served top_k items have a place in its ranking; the served
answer has only top_k, so the other side of the rank correlation counts when it is defined. The
answers callers get never change; a shadow failure is logged and counted, never raised."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from registry.domain.models import DiscoverQuery, DiscoverResult
from registry.service.compare import DEPTH, Comparison
from registry.service.serving import ServingSpace

if TYPE_CHECKING:
    from registry.service.discovery_service import DiscoveryService

log = logging.getLogger(__name__)
MAX_IN_FLIGHT = 8  # shadow work beyond this is skipped, so a slow candidate model cannot pile up


class ShadowRecorder:
    def __init__(self, discovery: DiscoveryService, rng: random.Random | None = None):
        self._discovery = discovery
        self._rng = rng or random.Random()
        self.stats: dict[str, Comparison] = {}  # candidate space name -> comparison with the serving answers
        self.errors: dict[str, int] = {}
        self.skipped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe_compare(self, query: DiscoverQuery, result: DiscoverResult, budget_left: float | None) -> None:
        for live in self._discovery.spaces.live():
            fraction = live.space.shadow_fraction
            if live.space.name == result.vector_space or fraction <= 0 or self._rng.random() >= fraction:
                continue
            if len(self._tasks) >= MAX_IN_FLIGHT:
                self.skipped += 1
                continue
            task = asyncio.get_running_loop().create_task(self._compare(live, query, result, budget_left))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _compare(
        self, live: ServingSpace, query: DiscoverQuery, served: DiscoverResult, budget_left: float | None
    ) -> None:
        name = live.space.name
        try:
            assert query.text is not None
            vector = await live.batcher.embed(query.text)
            # Deep, and without exploration: a least-tried capability moved to the top would skew the comparison.
            deep = replace(query, top_k=max(query.top_k, DEPTH), exploration_rate=0.0)
            shadow = self._discovery.search(live, deep, vector, budget_left, {}, time.perf_counter())
            comparison = self.stats.setdefault(name, Comparison(k=query.top_k))
            comparison.add(
                [m.capability.id for m in served.matches], [m.capability.id for m in shadow.matches], k=query.top_k
            )
        except Exception:
            self.errors[name] = self.errors.get(name, 0) + 1
            log.exception("shadow Discover on %s failed (the caller's answer was not affected)", name)

    async def drain(self) -> None:
        """Let shadow work in flight finish (at shutdown, or in tests)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
