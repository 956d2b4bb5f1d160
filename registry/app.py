"""The composition root: builds every part from Settings, in order, and starts the server."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from registry.config import Settings
from registry.domain.errors import FailedPrecondition
from registry.domain.models import LIVE_SPACE_STATES, SpaceState, VectorSpace
from registry.embedding import models
from registry.embedding.base import Embedder
from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path
from registry.embedding.template import check_template
from registry.index.hnsw import HnswParams
from registry.index.space_index import PlannerParams
from registry.manifest import load_agents
from registry.service.admin_service import AdminService
from registry.service.budget_service import BudgetService
from registry.service.discovery_service import DiscoveryService
from registry.service.follower import ChangeFollower
from registry.service.interop_service import InteropService
from registry.service.key_service import KeyService
from registry.service.outcomes import DiscoverMemory, OutcomeIndex, OutcomeService
from registry.service.policy_service import PolicyService
from registry.service.registry_service import RegistryService
from registry.service.serving import ServingSpace, Spaces
from registry.service.snapshots import SnapshotKeeper, Startup
from registry.service.space_loader import SpaceLoader
from registry.service.watch import DiscoverWatches
from registry.store import migrate
from registry.store.budgets import BudgetStore
from registry.store.engine import make_engine
from registry.store.keys import KeyStore
from registry.store.notify import ChangeListener
from registry.store.outcomes import OutcomeStore
from registry.store.policies import PolicyStore
from registry.store.repository import RegistryStore
from registry.store.spaces import SpaceStore
from registry.telemetry import Telemetry, install, uninstall
from registry.telemetry_setup import TelemetryExporters, build_telemetry
from registry.transport.convert import agent_from_proto
from registry.transport.server import GrpcServer

log = logging.getLogger(__name__)


def load_embedder(settings: Settings) -> Embedder:
    """The configured model on the configured backend. "onnx" exports it first when no valid export is
    there (once per models directory, about ten seconds, with torch), then serves it without torch."""
    path = settings.model_path or bundled_model_path()
    if settings.embedding_backend == "onnx":
        from registry.embedding.onnx_backend import OnnxEmbedder, export_onnx, onnx_dir

        exported = onnx_dir(models.resolve_models_dir(settings.models_dir, settings.data_dir))
        export_onnx(path, exported, expected_sha256=settings.model_sha256)
        return OnnxEmbedder(path, exported, expected_sha256=settings.model_sha256, cache_size=settings.embed_cache_size)
    return SentenceTransformerEmbedder(
        path, expected_sha256=settings.model_sha256, cache_size=settings.embed_cache_size
    )


def _log_lag(store: RegistryStore, follower: ChangeFollower) -> list[tuple[float, dict[str, str]]]:
    """Changes committed but not yet applied here, read at each metrics collection (one small query);
    nothing when the database cannot be read (the follower's error says why)."""
    try:
        head = store.watermark()
    except Exception:
        return []
    return [(max(head - follower.position, 0), {})]


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


@dataclass
class App:
    settings: Settings
    engine: Engine
    store: RegistryStore
    spaces: Spaces
    registry: RegistryService
    discovery: DiscoveryService
    policies: PolicyService
    server: GrpcServer
    budgets: BudgetService
    keys: KeyService
    follower: ChangeFollower
    snapshots: SnapshotKeeper
    space_store: SpaceStore
    loader: SpaceLoader
    admin: AdminService
    outcomes: OutcomeService
    outcome_index: OutcomeIndex
    port: int = 0
    operator_key_file: Path | None = None  # written on first start
    telemetry: Telemetry | None = None  # None: the no-op one (nothing configured)
    metrics_port: int | None = None  # where Prometheus scrapes /metrics
    listener: ChangeListener | None = None
    _tasks: set[asyncio.Future[object]] = field(default_factory=set)

    @property
    def serving(self) -> ServingSpace:
        return self.spaces.serving

    @property
    def startup(self) -> Startup:
        """How the serving space's index was loaded."""
        return self.loader.startups[self.spaces.serving.space.name]

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
        await self.discovery.shadow.drain()
        await self.budgets.stop_sweeper()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.snapshot_interval_s > 0:  # the next start loads this instead of rebuilding
            try:
                await self.snapshots.write_now()
            except Exception as exc:
                log.warning("could not write the shutdown snapshot (%s); the next start rebuilds", exc)
        if self.telemetry is not None:  # flush the last spans and metrics, stop the metrics endpoint
            uninstall(self.telemetry)
            await asyncio.to_thread(self.telemetry.shutdown)
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


def model_loader(settings: Settings, configured: Embedder) -> Callable[[str], Embedder]:
    """Loads embedding models by name: the configured one (already loaded), or one from the catalog, each
    once (loads run in worker threads, so the cache is locked)."""
    loaded: dict[str, Embedder] = {configured.model_name: configured}
    lock = threading.Lock()
    models_dir = models.resolve_models_dir(settings.models_dir, settings.data_dir)

    def load(name: str) -> Embedder:
        with lock:
            return loaded[name] if name in loaded else load_new(name)

    def load_new(name: str) -> Embedder:
        path = models.model_path(name, models_dir)
        if path is not None and models.spec(name).kind != "bundled" and not path.exists():
            # Building a model takes a minute or more: an operator step, not something a call waits for.
            raise FailedPrecondition(
                f"{name} is not built on this server: run `capreg models distill {name} --models-dir "
                f"{models_dir}` (on every replica, or share the directory), then retry"
            )
        loaded[name] = models.load_embedder(name, models_dir)
        return loaded[name]

    return load


async def bootstrap_space(
    settings: Settings, store: RegistryStore, space_store: SpaceStore, embedder: Embedder
) -> None:
    """On a new database, create the configured space, serving; on a known one, check that the configured
    space (if it is still live) was built the way the settings say."""
    configured = VectorSpace(
        name=settings.vector_space,
        model=embedder.model_name,
        model_revision=embedder.model_revision,
        weights_sha256=embedder.weights_sha256,
        template=settings.capability_template,
        dim=embedder.dim,
    )
    spaces = await asyncio.to_thread(space_store.list_spaces, True)
    known = {s.name: s for s in spaces}
    fresh = not any(s.state == SpaceState.SERVING for s in spaces) and configured.name not in known
    if fresh or (configured.name in known and known[configured.name].state in LIVE_SPACE_STATES):
        await asyncio.to_thread(store.ensure_space, configured)  # creates it, or checks how it was built


async def build_app(
    settings: Settings, embedder: Embedder | None = None, *, exporters: TelemetryExporters | None = None
) -> App:
    """Everything but the listening socket: database, models, vector spaces and their indexes.
    `exporters`: telemetry sinks of the caller's own (tests), besides those the settings name."""
    check_template(settings.capability_template)
    exporters = exporters or TelemetryExporters()
    built = build_telemetry(settings, span_exporter=exporters.spans, metric_reader=exporters.metrics)
    telemetry, metrics_port = built if built is not None else (None, None)
    if telemetry is not None:
        install(telemetry)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="capreg")
    )
    engine = await asyncio.to_thread(prepare_database, settings)
    if embedder is None:
        embedder = await asyncio.to_thread(load_embedder, settings)
    store = RegistryStore(engine)
    space_store = SpaceStore(engine)
    await bootstrap_space(settings, store, space_store, embedder)
    load_model = model_loader(settings, embedder)  # one cache: a model is loaded once per process
    loader = SpaceLoader(
        store,
        space_store,
        load_model,
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
        settings.data_dir / "snapshots",
    )
    spaces = await loader.load_all()
    policies = PolicyService(PolicyStore(engine))
    await policies.load()
    budgets = BudgetService(BudgetStore(engine))
    keys = KeyService(KeyStore(engine))
    await keys.load()
    handlers: dict[str, Callable[[], Awaitable[object]]] = {
        "policy": policies.refresh_if_changed,
        "tenant": policies.refresh_if_changed,
        "api_key": keys.refresh_if_changed,
    }
    follower = ChangeFollower(store, spaces, handlers=handlers, poll_s=settings.change_poll_s)
    snapshots = SnapshotKeeper(follower, spaces, settings.data_dir / "snapshots", settings.snapshot_interval_s)
    follower.handle("space", lambda: loader.sync(spaces, snapshots, follower.position))
    outcome_store = OutcomeStore(engine, settings.max_outcomes_per_capability)
    outcome_index = OutcomeIndex(outcome_store, settings.max_outcomes_per_capability)
    await outcome_index.load([live.space.id for live in spaces.live()])
    follower.handle("outcome", outcome_index.refresh)
    follower.on_capabilities_removed(outcome_index.forget)
    memory = DiscoverMemory()
    for name, startup in loader.startups.items():
        if startup.source == "snapshot":
            snapshots.loaded_from(name, startup.watermark)
    registry = RegistryService(store, spaces, settle=follower.sync)
    key_file = await keys.bootstrap(settings.data_dir) if settings.auth_enabled else None
    if not settings.auth_enabled:
        log.warning(
            "AUTHENTICATION IS OFF: every caller acts as a cluster operator. Use this for local development only."
        )
    discovery = DiscoveryService(
        spaces,
        budgets=budgets,
        policies=policies.rules_for,
        sync=follower.sync,
        recent_texts=settings.recent_texts,
        outcomes=outcome_index,
        memory=memory,
    )
    outcomes = OutcomeService(outcome_store, spaces, memory, settle=follower.sync)
    admin = AdminService(
        store,
        space_store,
        spaces,
        follower,
        snapshots,
        loader.startups,
        discovery,
        load_model,
        follower.sync,
    )
    server = GrpcServer(
        registry,
        discovery,
        policies,
        budgets,
        keys,
        admin,
        outcomes,
        DiscoverWatches(discovery, follower, settings.max_watches),
        InteropService(registry, store),
        authenticate=settings.auth_enabled,
        limits=settings.limits(),
        reuse_port=settings.reuse_port,
    )
    if telemetry is not None:
        telemetry.gauge(
            "capreg.index.capabilities",
            lambda: [(live.index.live_count, {"space": live.space.name}) for live in spaces.live()],
        )
        telemetry.gauge("capreg.changelog.position", lambda: [(follower.position, {})])
        telemetry.gauge("capreg.changelog.lag", lambda: _log_lag(store, follower))
    return App(
        settings,
        engine,
        store,
        spaces,
        registry,
        discovery,
        policies,
        server,
        budgets,
        keys,
        follower,
        snapshots,
        space_store,
        loader,
        admin,
        outcomes,
        outcome_index,
        operator_key_file=key_file,
        telemetry=telemetry,
        metrics_port=metrics_port,
    )
