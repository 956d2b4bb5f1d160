"""Writes the serving index to disk every `interval_s` when it has changed, and once more at shutdown.

A snapshot is written while holding the change-log follower's lock, so the index stands still at one
watermark (Discover goes on; writes wait for the follower). A snapshot that cannot be written is logged
and tried again at the next interval while the server keeps serving."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from registry.index import snapshot
from registry.index.snapshot import SnapshotInfo
from registry.service.follower import ChangeFollower
from registry.service.serving import ServingSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Startup:
    """How the index was loaded: from a snapshot, or rebuilt from the database (and why)."""

    source: str  # "snapshot" | "database"
    reason: str
    seconds: float
    watermark: int


class SnapshotKeeper:
    def __init__(self, follower: ChangeFollower, serving: ServingSpace, root: Path, interval_s: float):
        self._follower = follower
        self._serving = serving
        self.root = root
        self._interval_s = interval_s
        self.last: SnapshotInfo | None = None
        self.last_error = ""
        self.written = 0
        self.failed = 0
        self._saved_watermark = -1
        self.saved_at: datetime | None = None

    def loaded_from(self, watermark: int) -> None:
        """The index came from a snapshot at this watermark: no need to write it again until it moves."""
        self._saved_watermark = watermark
        self.saved_at = None

    @property
    def saved_watermark(self) -> int:
        """Of the last snapshot written or loaded; 0 for none."""
        return max(self._saved_watermark, 0)

    async def write_now(self) -> SnapshotInfo | None:
        """Snapshot the index unless the last one is at its watermark already."""
        async with self._follower.lock:
            index = self._serving.index
            if index.watermark == self._saved_watermark:
                return None
            try:
                info = await asyncio.to_thread(snapshot.write, index, self._serving.space, self.root)
            except Exception as exc:
                self.failed += 1
                self.last_error = str(exc) or type(exc).__name__  # never "" while failing: "" means no error
                raise
        self.last, self.last_error, self._saved_watermark = info, "", info.watermark
        self.saved_at = datetime.now(UTC)
        self.written += 1
        log.info(
            "snapshot of %s at change %d: %d rows, %.1f MB in %.2f s",
            self._serving.space.name,
            info.watermark,
            info.rows,
            info.bytes / 1e6,
            info.seconds,
        )
        return info

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.write_now()
            except Exception as exc:  # a full or read-only disk must not stop the server
                log.warning("could not write a snapshot to %s (%s); serving on and retrying", self.root, exc)
