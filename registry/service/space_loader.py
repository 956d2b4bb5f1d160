"""Brings this process's live vector spaces in line with the database: at start-up (from snapshots where
sound), and whenever the change-log follower reads a space change made here or on another replica
(a new space gets an index, a promotion switches the serving pointer, a retired space is dropped)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from registry.domain.errors import FailedPrecondition
from registry.domain.models import LIVE_SPACE_STATES, CatalogEntry, SpaceState, VectorSpace
from registry.embedding.base import Embedder
from registry.index import snapshot
from registry.index.hnsw import HnswParams
from registry.index.space_index import PlannerParams, SpaceIndex
from registry.service.serving import ServingSpace, Spaces
from registry.service.snapshots import SnapshotKeeper, Startup
from registry.store.repository import RegistryStore
from registry.store.spaces import SpaceStore

log = logging.getLogger(__name__)


async def load_index(
    store: RegistryStore, space: VectorSpace, template: SpaceIndex, snapshot_root: Path
) -> tuple[SpaceIndex, Startup]:
    """The snapshot when it is sound and not ahead of the database; else a rebuild from stored vectors."""
    started = time.perf_counter()
    head = await asyncio.to_thread(store.watermark)
    try:
        index = await asyncio.to_thread(snapshot.load, snapshot_root, space, template)
        if index.watermark > head:
            raise snapshot.SnapshotError(
                f"the snapshot is at change {index.watermark} but the database only reaches {head} "
                "(was the database restored from an older backup?)"
            )
        startup = Startup("snapshot", "", time.perf_counter() - started, index.watermark)
        log.info(
            "index of %s loaded from its snapshot: %d capabilities at change %d in %.2f s; replaying the log",
            space.name,
            index.live_count,
            index.watermark,
            startup.seconds,
        )
        return index, startup
    except snapshot.SnapshotError as exc:
        reason = str(exc)
    (log.info if reason.startswith("no snapshot") else log.warning)(
        "rebuilding the index of %s from the database: %s", space.name, reason
    )
    index = template
    entries = await asyncio.to_thread(lambda: list(store.catalog(space.id)))
    await asyncio.to_thread(index.bulk_load, entries, head)
    startup = Startup("database", reason, time.perf_counter() - started, head)
    log.info(
        "index of %s built: %d capabilities at change %d in %.2f s", space.name, index.live_count, head, startup.seconds
    )
    return index, startup


class SpaceLoader:
    def __init__(
        self,
        store: RegistryStore,
        space_store: SpaceStore,
        load_model: Callable[[str], Embedder],
        hnsw: HnswParams,
        planner: PlannerParams,
        snapshot_root: Path,
    ):
        self._store = store
        self._space_store = space_store
        self._load_model = load_model
        self._hnsw = hnsw
        self._planner = planner
        self._snapshot_root = snapshot_root
        self.startups: dict[str, Startup] = {}

    def _catalog(self, space_id: int) -> list[CatalogEntry]:
        return list(self._store.catalog(space_id))

    def new_index(self, dim: int) -> SpaceIndex:
        return SpaceIndex(dim, self._hnsw, self._planner)

    def embedder_for(self, space: VectorSpace) -> Embedder:
        """The space's model, checked to be the very one its vectors were made with."""
        embedder = self._load_model(space.model)
        if embedder.weights_sha256 != space.weights_sha256 or embedder.dim != space.dim:
            raise FailedPrecondition(
                f"vector space {space.name!r} was built with {space.model} weights {space.weights_sha256[:12]} "
                f"(dim {space.dim}), but this server loads weights {embedder.weights_sha256[:12]} "
                f"(dim {embedder.dim}); install the same model on every replica"
            )
        return embedder

    async def load_all(self) -> Spaces:
        """Start-up: every live space from its snapshot (or the database). The serving one must load; a
        candidate that cannot (its model missing here) is left out with an error in the log."""
        rows = await asyncio.to_thread(self._space_store.list_spaces, False)
        serving = next((r for r in rows if r.state == SpaceState.SERVING), None)
        if serving is None:
            raise FailedPrecondition("no vector space is serving; promote one with `capreg vectors promote`")
        live = []
        for space in rows:
            if space.state not in LIVE_SPACE_STATES:
                continue
            try:
                embedder = await asyncio.to_thread(self.embedder_for, space)
            except Exception as exc:
                if space.name == serving.name:
                    raise
                log.error("vector space %s is not loaded on this server: %s", space.name, exc)
                continue
            root = self._snapshot_root / space.name
            index, self.startups[space.name] = await load_index(self._store, space, self.new_index(space.dim), root)
            live.append(ServingSpace(space, embedder, index))
        return Spaces(live, serving.name)

    async def sync(self, spaces: Spaces, snapshots: SnapshotKeeper, position: int) -> None:
        """A space changed (the follower read it; it holds its lock): load new live spaces, follow the
        serving one, drop retired ones."""
        rows = await asyncio.to_thread(self._space_store.list_spaces, True)
        live_rows = {r.name: r for r in rows if r.state in LIVE_SPACE_STATES}
        for name, space in live_rows.items():
            if name in spaces:
                spaces.update(space)
                continue
            started = time.perf_counter()
            try:
                embedder = await asyncio.to_thread(self.embedder_for, space)
            except Exception as exc:
                log.error("vector space %s is not loaded on this server: %s", name, exc)
                continue
            index = self.new_index(space.dim)
            entries = await asyncio.to_thread(self._catalog, space.id)
            await asyncio.to_thread(index.bulk_load, entries, position)
            spaces.add(ServingSpace(space, embedder, index))
            self.startups[name] = Startup(
                "database", "created while this server ran", time.perf_counter() - started, position
            )
            log.info("vector space %s (%s) is live here with %d capabilities", name, space.state, index.live_count)
        serving = next((r for r in rows if r.state == SpaceState.SERVING), None)
        if serving is not None and serving.name != spaces.serving.space.name:
            if serving.name in spaces:
                spaces.switch(serving.name)
                log.info("vector space %s serves from now on", serving.name)
            else:
                log.error("vector space %s was promoted but cannot be loaded here; still serving %s",
                          serving.name, spaces.serving.space.name)  # fmt: skip
        for name in spaces.names():
            if name not in live_rows and name != spaces.serving.space.name:
                spaces.remove(name)
                snapshots.forget(name)
                self.startups.pop(name, None)
                log.info("vector space %s is no longer live here; its index is freed", name)
