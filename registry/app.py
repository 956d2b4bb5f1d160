"""The composition root: builds every part from Settings, in order, and starts the server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from registry.config import Settings
from registry.domain.errors import FailedPrecondition
from registry.domain.models import VectorSpace
from registry.embedding.base import Embedder
from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path
from registry.embedding.template import check_template
from registry.index import snapshot
from registry.index.hnsw import HnswParams
from registry.index.space_index import PlannerParams, SpaceIndex
from registry.manifest import load_agents
from registry.service.admin_service import AdminService
from registry.service.budget_service import BudgetService
from registry.service.discovery_service import DiscoveryService
from registry.service.follower import ChangeFollower
from registry.service.key_service import KeyService
from registry.service.policy_service import PolicyService
from registry.service.registry_service import RegistryService
from registry.service.serving import ServingSpace
from registry.service.snapshots import SnapshotKeeper, Startup
from registry.store import migrate
from registry.store.budgets import BudgetStore
from registry.store.engine import make_engine
from registry.store.keys import KeyStore
from registry.store.notify import ChangeListener
from registry.store.policies import PolicyStore
from registry.store.repository import RegistryStore
from registry.transport.convert import agent_from_proto
from registry.transport.server import GrpcServer

log = logging.getLogger(__name__)


def load_embedder(settings: Settings) -> SentenceTransformerEmbedder:
    path = settings.model_path or bundled_model_path()
    return SentenceTransformerEmbedder(
        path, expected_sha256=settings.model_sha256, cache_size=settings.embed_cache_size
    )


def demo_catalog_path() -> Path:
    return Path(str(resources.files("registry.demo").joinpath("catalog.yaml")))


def prepare_database(settings: Settings) -> Engine:
    """An engine on a database at the head revision; migrates the embedded one itself."""
    engine = make_engine(settings.resolved_database_url())
    auto = settings.migrate_on_start if settings.migrate_on_start is not None else settings.is_embedded()
    if auto:
        migrate.upgrade(engine)
    current, head = migrate.current_revision(engine), migrate.head_revision(engine)
    if current != head:
        raise FailedPrecondition(
            f"the database is at schema revision {current or 'none'} but this server needs {head}; "
            "run `capreg migrate` first"
        )
    return engine


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


@dataclass
class App:
    settings: Settings
    engine: Engine
    store: RegistryStore
    serving: ServingSpace
    registry: RegistryService
    discovery: DiscoveryService
    policies: PolicyService
    server: GrpcServer
    budgets: BudgetService
    keys: KeyService
    follower: ChangeFollower
    snapshots: SnapshotKeeper
    startup: Startup
    port: int = 0
    operator_key_file: Path | None = None  # written on first start
    listener: ChangeListener | None = None
    _tasks: set[asyncio.Future[object]] = field(default_factory=set)

    async def start(self) -> int:
        """Listen at once, but say NOT_SERVING (gRPC health) until the index has caught up with the log."""
        if not self.settings.is_embedded():
            loop = asyncio.get_running_loop()
            self.listener = ChangeListener(
                self.settings.resolved_database_url(),
                lambda _entity: loop.call_soon_threadsafe(self.follower.wake),
            )
            self.listener.start()
        self.budgets.start_sweeper()
        self.port = await self.server.start(self.settings.host, self.settings.port, self.settings.tls(), ready=False)
        log.info("capreg listening on %s:%d; catching up with the change log", self.settings.host, self.port)
        await self.follower.catch_up()
        self.follower.start()
        self._background(self._sweep_leases())
        if self.settings.snapshot_interval_s > 0:
            self._background(self.snapshots.run())
        await self.server.set_ready(True)
        log.info("capreg serving on %s:%d at change %d", self.settings.host, self.port, self.follower.position)
        return self.port

    async def _sweep_leases(self) -> None:
        """Remove agents whose lease ran out more than lease_grace_s ago (Discover left them out at once)."""
        failing = False
        while True:
            await asyncio.sleep(self.settings.lease_sweep_s)
            try:
                await self.registry.remove_expired(self.settings.lease_grace_s)
                failing = False
            except Exception:
                if not failing:
                    log.exception("could not remove expired agents; retrying")
                failing = True

    async def stop(self) -> None:
        await self.server.stop(self.settings.shutdown_grace_s)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        await self.follower.stop()
        await self.budgets.stop_sweeper()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.snapshot_interval_s > 0:  # the next start loads this instead of rebuilding
            try:
                await self.snapshots.write_now()
            except Exception as exc:
                log.warning("could not write the shutdown snapshot (%s); the next start rebuilds", exc)
        # Let database work already handed to threads finish before the pool goes away.
        await asyncio.get_running_loop().shutdown_default_executor()
        self.engine.dispose()

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load_demo_if_empty(self) -> int:
        """Register the demo catalog into an empty registry; returns how many agents were added."""
        if self.serving.index.live_count:
            return 0
        agents = load_agents(demo_catalog_path())
        for agent in agents:
            await self.registry.register(agent_from_proto(agent))
        log.info("loaded %d demo agents", len(agents))
        return len(agents)


async def build_app(settings: Settings, embedder: Embedder | None = None) -> App:
    """Everything but the listening socket: database, model, vector space and index."""
    check_template(settings.capability_template)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="capreg")
    )
    engine = await asyncio.to_thread(prepare_database, settings)
    if embedder is None:
        embedder = await asyncio.to_thread(load_embedder, settings)
    store = RegistryStore(engine)
    space = await asyncio.to_thread(
        store.ensure_space,
        VectorSpace(
            name=settings.vector_space,
            model=embedder.model_name,
            model_revision=embedder.model_revision,
            weights_sha256=embedder.weights_sha256,
            template=settings.capability_template,
            dim=embedder.dim,
        ),
    )
    template = SpaceIndex(
        space.dim,
        HnswParams(
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
        ),
        PlannerParams(
            exact_always_rows=settings.exact_always_rows,
            exact_max_rows=settings.exact_max_rows,
            hnsw_min_selectivity=settings.hnsw_min_selectivity,
        ),
    )
    snapshot_root = settings.data_dir / "snapshots" / space.name
    index, startup = await load_index(store, space, template, snapshot_root)
    serving = ServingSpace(space=space, embedder=embedder, index=index)
    policies = PolicyService(PolicyStore(engine))
    await policies.load()
    budgets = BudgetService(BudgetStore(engine))
    keys = KeyService(KeyStore(engine))
    await keys.load()
    follower = ChangeFollower(
        store,
        serving,
        handlers={
            "policy": policies.refresh_if_changed,
            "tenant": policies.refresh_if_changed,
            "api_key": keys.refresh_if_changed,
        },
        poll_s=settings.change_poll_s,
    )
    registry = RegistryService(store, serving, settle=follower.sync)
    snapshots = SnapshotKeeper(follower, serving, snapshot_root, settings.snapshot_interval_s)
    if startup.source == "snapshot":
        snapshots.loaded_from(index.watermark)
    key_file = await keys.bootstrap(settings.data_dir) if settings.auth_enabled else None
    if not settings.auth_enabled:
        log.warning(
            "AUTHENTICATION IS OFF: every caller acts as a cluster operator. Use this for local development only."
        )
    discovery = DiscoveryService(serving, budgets=budgets, policies=policies.rules_for, sync=follower.sync)
    admin = AdminService(store, serving, follower, snapshots, startup)
    server = GrpcServer(
        registry,
        discovery,
        policies,
        budgets,
        keys,
        admin,
        authenticate=settings.auth_enabled,
        limits=settings.limits(),
    )
    return App(
        settings,
        engine,
        store,
        serving,
        registry,
        discovery,
        policies,
        server,
        budgets,
        keys,
        follower,
        snapshots,
        startup,
        operator_key_file=key_file,
    )
