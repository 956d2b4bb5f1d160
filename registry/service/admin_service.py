"""What an operator asks a server about itself: where its index stands and how it got there."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from registry.service.follower import ChangeFollower
from registry.service.serving import ServingSpace
from registry.service.snapshots import SnapshotKeeper, Startup
from registry.store.repository import RegistryStore


@dataclass(frozen=True, slots=True)
class IndexStatus:
    vector_space: str
    watermark: int
    log_head: int
    capabilities: int
    digest: str
    ready: bool
    startup: Startup
    snapshot_watermark: int
    snapshot_time: datetime | None
    snapshot_error: str
    follower_error: str
    changes_applied: int


class AdminService:
    def __init__(
        self,
        store: RegistryStore,
        serving: ServingSpace,
        follower: ChangeFollower,
        snapshots: SnapshotKeeper,
        startup: Startup,
    ):
        self._store = store
        self._serving = serving
        self._follower = follower
        self._snapshots = snapshots
        self._startup = startup

    async def index_status(self) -> IndexStatus:
        follower_error = self._follower.last_error
        try:
            head = await asyncio.to_thread(self._store.watermark)
        except Exception as exc:  # the database is away: say so, answer the rest from memory
            head, follower_error = 0, follower_error or str(exc).splitlines()[0][:200]
        async with self._follower.lock:  # one consistent position
            index = self._serving.index
            watermark, count, digest = index.watermark, index.live_count, index.digest()
        return IndexStatus(
            vector_space=self._serving.space.name,
            watermark=watermark,
            log_head=head,
            capabilities=count,
            digest=digest,
            ready=self._follower.caught_up.is_set(),
            startup=self._startup,
            snapshot_watermark=self._snapshots.saved_watermark,
            snapshot_time=self._snapshots.saved_at,
            snapshot_error=self._snapshots.last_error,
            follower_error=follower_error,
            changes_applied=self._follower.applied,
        )
