"""Writes each live space's index to disk every `interval_s` when it has changed, and once more at
shutdown.

A snapshot is written while holding the change-log follower's lock, so the index stands still at one
watermark (Discover goes on; writes wait for the follower). A snapshot that cannot be written is logged
and tried again at the next interval while the server keeps serving."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from registry.index import snapshot
from registry.index.snapshot import SnapshotInfo
from registry.service.follower import ChangeFollower
from registry.service.serving import Spaces

log = logging.getLogger(__name__)
SNAPSHOT_DUTY_FACTOR = 10.0  # wait at least this many times the last snapshot's duration before the next


@dataclass(frozen=True, slots=True)
class Startup:
    """How an index was loaded: from a snapshot, or rebuilt from the database (and why)."""

    source: str  # "snapshot" | "database"
    reason: str
    seconds: float
    watermark: int


class SnapshotKeeper:
    def __init__(self, follower: ChangeFollower, spaces: Spaces, root: Path, interval_s: float):
        self._follower = follower
        self._spaces = spaces
        self.root = root  # <data_dir>/snapshots; one directory per space below it
        self._interval_s = interval_s
        self.last: SnapshotInfo | None = None
        self.last_error = ""
        self.written = 0
        self.failed = 0
        self._saved: dict[str, int] = {}  # space name -> watermark of its last snapshot written or loaded
        self.saved_at: datetime | None = None

    def directory(self, space: str) -> Path:
        return self.root / space

    def loaded_from(self, space: str, watermark: int) -> None:
        """The index came from a snapshot at this watermark: no need to write it again until it moves."""
        self._saved[space] = watermark

    def saved_watermark(self, space: str) -> int:
        """Of the space's last snapshot written or loaded; 0 for none."""
        return max(self._saved.get(space, 0), 0)

    def forget(self, space: str) -> None:
        """A retired space: its snapshots go too."""
        self._saved.pop(space, None)
        shutil.rmtree(self.directory(space), ignore_errors=True)

    async def write_now(self) -> list[SnapshotInfo]:
        """Snapshot every live index whose last snapshot is not at its watermark."""
        written = []
        async with self._follower.lock:
            for live in self._spaces.live():
                name = live.space.name
                if live.index.watermark == self._saved.get(name):
                    continue
                try:
                    info = await asyncio.to_thread(snapshot.write, live.index, live.space, self.directory(name))
                except Exception as exc:
                    self.failed += 1
                    self.last_error = str(exc) or type(exc).__name__  # never "" while failing: "" means no error
                    raise
                self.last, self.last_error, self._saved[name] = info, "", info.watermark
                self.saved_at = datetime.now(UTC)
                self.written += 1
                written.append(info)
                log.info(
                    "snapshot of %s at change %d: %d rows, %.1f MB in %.2f s",
                    name,
                    info.watermark,
                    info.rows,
                    info.bytes / 1e6,
                    info.seconds,
                )
        return written

    async def run(self) -> None:
        while True:
            # A snapshot holds the follower (writes wait), and a large index takes seconds to write: spend at
            # most a tenth of the time on snapshots, however short the interval.
            last = self.last.seconds if self.last is not None else 0.0
            await asyncio.sleep(max(self._interval_s, SNAPSHOT_DUTY_FACTOR * last))
            try:
                await self.write_now()
            except Exception as exc:  # a full or read-only disk must not stop the server
                log.warning("could not write a snapshot to %s (%s); serving on and retrying", self.root, exc)
