"""The composition root: builds every part from Settings, in order, and starts the server."""

from __future__ import annotations

import asyncio
import logging
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
from registry.index.hnsw import HnswParams
from registry.index.space_index import PlannerParams, SpaceIndex
from registry.manifest import load_agents
from registry.service.budget_service import BudgetService
from registry.service.discovery_service import DiscoveryService
from registry.service.key_service import KeyService
from registry.service.policy_service import PolicyService
from registry.service.registry_service import RegistryService
from registry.service.serving import ServingSpace
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
    port: int = 0
    operator_key_file: Path | None = None  # written on first start
    listener: ChangeListener | None = None
    _tasks: set[asyncio.Future[bool]] = field(default_factory=set)

    async def start(self) -> int:
        self.policies.start()
        self.keys.start()
        if not self.settings.is_embedded():
            loop = asyncio.get_running_loop()
            self.listener = ChangeListener(
                self.settings.resolved_database_url(),
                lambda entity: loop.call_soon_threadsafe(self._changed_elsewhere, entity),
            )
            self.listener.start()
        self.budgets.start_sweeper()
        self.port = await self.server.start(self.settings.host, self.settings.port, self.settings.tls())
        log.info("capreg serving on %s:%d", self.settings.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self.server.stop(self.settings.shutdown_grace_s)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        await self.policies.stop()
        await self.keys.stop()
        await self.budgets.stop_sweeper()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Let database work already handed to threads finish before the pool goes away.
        await asyncio.get_running_loop().shutdown_default_executor()
        self.engine.dispose()

    def _changed_elsewhere(self, entity: str) -> None:
        """Another process committed a change: refresh what we cache now, not at the next poll."""
        if entity in ("policy", "*"):
            self._background(self.policies.refresh_if_changed())
        if entity in ("api_key", "*"):
            self._background(self.keys.refresh_if_changed())

    def _background(self, work: Coroutine[Any, Any, bool]) -> None:
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
    index = SpaceIndex(
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
    watermark = await asyncio.to_thread(store.watermark)
    entries = await asyncio.to_thread(lambda: list(store.catalog(space.id)))
    await asyncio.to_thread(index.bulk_load, entries, watermark)
    log.info("index of %s built: %d capabilities at watermark %d", space.name, index.live_count, watermark)
    serving = ServingSpace(space=space, embedder=embedder, index=index)
    registry = RegistryService(store, serving)
    policies = PolicyService(PolicyStore(engine), refresh_s=settings.policy_refresh_s)
    await policies.load()
    budgets = BudgetService(BudgetStore(engine))
    keys = KeyService(KeyStore(engine), refresh_s=settings.key_refresh_s)
    await keys.load()
    key_file = await keys.bootstrap(settings.data_dir) if settings.auth_enabled else None
    if not settings.auth_enabled:
        log.warning(
            "AUTHENTICATION IS OFF: every caller acts as a cluster operator. Use this for local development only."
        )
    discovery = DiscoveryService(serving, budgets=budgets, policies=policies.rules_for)
    server = GrpcServer(
        registry, discovery, policies, budgets, keys, authenticate=settings.auth_enabled, limits=settings.limits()
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
        operator_key_file=key_file,
    )
