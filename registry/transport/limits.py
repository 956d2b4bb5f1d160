"""Per-key rate limits: a token bucket per API key, refilled continuously. Over the limit a call gets
RESOURCE_EXHAUSTED with a RetryInfo saying when a token will be there."""

from __future__ import annotations

import time
from collections.abc import Callable

from registry.domain.errors import DomainError, ErrorCode


class RateLimited(DomainError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class RateLimiter:
    def __init__(self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> None:
        """Spend one token of `key`'s bucket, or raise RateLimited."""
        if self.per_second <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.per_second
            raise RateLimited(
                f"this API key is over its limit of {self.per_second:g} calls/s; retry in {wait:.2f} s",
                retry_after_s=wait,
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
            self._buckets.clear()
