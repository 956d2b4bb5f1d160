"""What an operator asks of a server: where its index stands, and vector-space rollouts (create, backfill,
compare, shadow, promote, roll back, retire)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from registry.domain import validation as v
from registry.domain.errors import FailedPrecondition, InvalidArgument
from registry.domain.models import DiscoverQuery, SpaceState, VectorSpace
from registry.embedding.base import Embedder
from registry.embedding.models import UnknownModel
from registry.embedding.sentence import WeightsMismatch
from registry.embedding.template import check_template, render, text_hash
from registry.service.calls import settle as settle_within_call
from registry.service.compare import DEPTH, Comparison
from registry.service.discovery_service import DiscoveryService
from registry.service.follower import ChangeFollower
from registry.service.serving import Spaces
from registry.service.snapshots import SnapshotKeeper, Startup
from registry.store.repository import RegistryStore, vector_to_bytes
from registry.store.spaces import Coverage, SpaceStore

MAX_BACKFILL_BATCH = 1024
MAX_COMPARE_TASKS = 10_000


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


@dataclass(frozen=True, slots=True)
class SpaceStatus:
    space: VectorSpace
    coverage: Coverage
    previous_serving: str  # the name of what a rollback returns to, or ""
    live_here: bool  # this server holds an index of it
    indexed: int  # rows in that index
    shadow: Comparison | None
    shadow_errors: int
    consistency_token: int = 0  # the change-log seq of the write that answers with it (0 for reads)


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    space: str
    done: int  # embedded and stored by this run
    total: int  # missing when this run started
    rate_per_s: float
    eta_s: float
    state: str  # the space's state after this batch
    consistency_token: int = 0  # the change-log seq of this run's latest write (0: none yet)


@dataclass(frozen=True, slots=True)
class CompareTask:
    text: str
    expected: tuple[str, ...] = ()  # agent names, any of which counts as right


@dataclass(frozen=True, slots=True)
class CompareReport:
    old: str
    new: str
    comparison: Comparison


class AdminService:
    def __init__(
        self,
        store: RegistryStore,
        space_store: SpaceStore,
        spaces: Spaces,
        follower: ChangeFollower,
        snapshots: SnapshotKeeper,
        startups: dict[str, Startup],
        discovery: DiscoveryService,
        load_model: Callable[[str], Embedder],
        settle: Callable[[int], Awaitable[None]],
    ):
        self._store = store
        self._space_store = space_store
        self._spaces = spaces
        self._follower = follower
        self._snapshots = snapshots
        self._startups = startups
        self._discovery = discovery
        self._load_model = load_model
        self._sync = settle

    async def _settle(self, token: int) -> None:
        await settle_within_call(self._sync, token)

    # -- index status --------------------------------------------------------------------------------

    async def index_status(self) -> IndexStatus:
        follower_error = self._follower.last_error
        try:
            head = await asyncio.to_thread(self._store.watermark)
        except Exception as exc:  # the database is away: say so, answer the rest from memory
            head, follower_error = 0, follower_error or str(exc).splitlines()[0][:200]
        async with self._follower.lock:  # one consistent position
            live = self._spaces.serving
            watermark, count, digest = live.index.watermark, live.index.live_count, live.index.digest()
        name = live.space.name
        return IndexStatus(
            vector_space=name,
            watermark=watermark,
            log_head=head,
            capabilities=count,
            digest=digest,
            ready=self._follower.caught_up.is_set(),
            startup=self._startups.get(name, Startup("follower", "loaded when it was created", 0.0, 0)),
            snapshot_watermark=self._snapshots.saved_watermark(name),
            snapshot_time=self._snapshots.saved_at,
            snapshot_error=self._snapshots.last_error,
            follower_error=follower_error,
            changes_applied=self._follower.applied,
        )

    # -- spaces --------------------------------------------------------------------------------------

    async def create_space(self, name: str, model: str, template: str) -> SpaceStatus:
        v.check_name(name, "name")
        if not model:
            raise InvalidArgument("model", "name the embedding model (`capreg models list` shows them)")
        try:
            check_template(template)
        except ValueError as exc:
            raise InvalidArgument("template", str(exc)) from exc
        try:
            embedder = await asyncio.to_thread(self._load_model, model)
        except UnknownModel as exc:
            raise InvalidArgument("model", str(exc)) from exc
        except WeightsMismatch as exc:  # present but damaged
            raise FailedPrecondition(str(exc)) from exc
        space, seq = await asyncio.to_thread(
            self._space_store.create,
            VectorSpace(
                name=name,
                model=embedder.model_name,
                model_revision=embedder.model_revision,
                weights_sha256=embedder.weights_sha256,
                template=template,
                dim=embedder.dim,
                state=SpaceState.BUILDING.value,
            ),
        )
        await self._settle(seq)  # this server loads its index before answering
        return await self._status(space, token=seq)

    async def list_spaces(self) -> list[SpaceStatus]:
        spaces = await asyncio.to_thread(self._space_store.list_spaces)
        names = {s.id: s.name for s in spaces}  # read once, not once per space
        return [await self._status(space, names) for space in spaces]

    async def get_space(self, name: str) -> SpaceStatus:
        v.check_name(name, "name")
        return await self._status(await asyncio.to_thread(self._space_store.get, name))

    async def _status(self, space: VectorSpace, names: dict[int, str] | None = None, token: int = 0) -> SpaceStatus:
        """With `names` (space id -> name) the previous serving space is named without another read; `token`:
        the seq of the write this answers."""
        coverage = await asyncio.to_thread(self._space_store.coverage, space.id)
        if names is None:
            names = {s.id: s.name for s in await asyncio.to_thread(self._space_store.list_spaces)}
        live = self._spaces.get(space.name) if space.name in self._spaces else None
        shadow = self._discovery.shadow
        return SpaceStatus(
            space=space,
            coverage=coverage,
            previous_serving=names.get(space.previous_serving_id or 0, ""),
            live_here=live is not None,
            indexed=live.index.live_count if live is not None else 0,
            shadow=shadow.stats.get(space.name),
            shadow_errors=shadow.errors.get(space.name, 0),
            consistency_token=token,
        )

    async def backfill(self, name: str, batch_size: int) -> AsyncIterator[BackfillProgress]:
        """Embed every capability the space lacks, in batches, each committed before the next: a backfill
        that stops (a crash, a cancelled call) resumes where it stopped and never re-embeds a finished
        row. Ends with the space ready."""
        v.check_name(name, "name")
        if not 1 <= batch_size <= MAX_BACKFILL_BATCH:
            raise InvalidArgument("batch_size", f"must be between 1 and {MAX_BACKFILL_BATCH} (0 means 64)")
        live = self._spaces.get(name)
        space = live.space
        if space.state not in (SpaceState.BUILDING, SpaceState.READY):
            raise FailedPrecondition(
                f"vector space {name!r} is {space.state}; only a building or ready space is filled"
            )
        total = (await asyncio.to_thread(self._space_store.coverage, space.id)).missing
        started, done, token = time.monotonic(), 0, 0
        while batch := await asyncio.to_thread(self._space_store.missing, space.id, batch_size):
            texts = [render(space.template, m.agent, m.capability) for m in batch]
            try:
                vectors = await asyncio.to_thread(live.embedder.embed, texts)
            except Exception as exc:  # the model itself fails: the space cannot be built as configured
                seq = await asyncio.to_thread(self._space_store.fail, space.id, f"embedding failed: {exc}")
                if seq:
                    await self._settle(seq)
                raise FailedPrecondition(
                    f"vector space {name!r} failed: its model could not embed ({exc}); retire it and create another"
                ) from exc
            rows = [
                (m, text_hash(text), vector_to_bytes(np.asarray(vector, dtype=np.float32)))
                for m, text, vector in zip(batch, texts, vectors, strict=True)
            ]
            seq, stored = await asyncio.to_thread(self._space_store.put_vectors, space.id, rows)
            if seq:
                await self._settle(seq)
                token = seq
            done += stored  # a row skipped as changed meanwhile is still missing: a later batch embeds it
            total = max(total, done)
            rate = done / max(time.monotonic() - started, 1e-9)
            eta = (total - done) / rate if rate else 0.0
            yield BackfillProgress(name, done, total, rate, eta, space.state, token)
        became, seq = await asyncio.to_thread(self._space_store.mark_ready_if_complete, space.id)
        if became:
            await self._settle(seq)
            token = seq
        state = (await asyncio.to_thread(self._space_store.get, name)).state
        rate = done / max(time.monotonic() - started, 1e-9)
        yield BackfillProgress(name, done, max(total, done), rate, 0.0, state, token)

    async def compare(
        self, old: str, new: str, tasks: Sequence[CompareTask], k: int, tenant: str, recent: int
    ) -> CompareReport:
        """Run each task through both spaces (as `tenant`, no filters) and compare the answers; with
        expected names, also each space's top-1 and top-5 accuracy. `recent` adds that many of this
        server's recent Discover texts (of `tenant`) as unlabelled tasks."""
        for field, name in (("old", old), ("new", new)):
            v.check_name(name, field)
            self._spaces.get(name)
        if not 1 <= k <= v.MAX_TOP_K:
            raise InvalidArgument("k", f"must be between 1 and {v.MAX_TOP_K} (0 means 5)")
        if not 0 <= recent <= MAX_COMPARE_TASKS:
            raise InvalidArgument("recent", f"must be between 0 and {MAX_COMPARE_TASKS}")
        tenant = v.tenant_or_default(tenant, "tenant")
        tasks = [*tasks, *(CompareTask(text) for text in self._discovery.recent_texts(tenant, recent))]
        if not tasks:
            raise InvalidArgument("tasks", "give tasks, or ask for recent Discover texts with `recent`")
        if len(tasks) > MAX_COMPARE_TASKS:
            raise InvalidArgument("tasks", f"at most {MAX_COMPARE_TASKS} tasks in one comparison")
        comparison = Comparison(k=k)
        depth = min(DEPTH, v.MAX_TOP_K)  # deep lists for the rank correlation; overlap and accuracy cut them
        for i, task in enumerate(tasks):
            v.check_text(task.text, f"tasks[{i}].text", v.MAX_QUERY_TEXT, required=True)
            for j, name in enumerate(task.expected):
                v.check_text(name, f"tasks[{i}].expected[{j}]", 128, required=True)
            answers = []
            for space in (old, new):
                query = DiscoverQuery(tenant=tenant, text=task.text, top_k=depth, vector_space=space)
                result = await self._discovery.discover(query)
                answers.append([m.agent_name for m in result.matches])
            comparison.add(answers[0], answers[1], task.expected)
        return CompareReport(old, new, comparison)

    async def promote(self, name: str) -> SpaceStatus:
        v.check_name(name, "name")
        self._spaces.get(name)  # loaded here, so this server can switch the moment it commits
        space, seq = await asyncio.to_thread(self._space_store.promote, name)
        await self._settle(seq)
        return await self._status(space, token=seq)

    async def rollback(self) -> SpaceStatus:
        space, seq = await asyncio.to_thread(self._space_store.rollback)
        await self._settle(seq)
        return await self._status(space, token=seq)

    async def retire(self, name: str) -> SpaceStatus:
        v.check_name(name, "name")
        space, seq = await asyncio.to_thread(self._space_store.retire, name)
        await self._settle(seq)
        return await self._status(space, token=seq)

    async def set_shadow(self, name: str, fraction: float) -> SpaceStatus:
        v.check_name(name, "name")
        if not 0.0 <= fraction <= 1.0:
            raise InvalidArgument("fraction", "must be between 0 and 1")
        space, seq = await asyncio.to_thread(self._space_store.set_shadow, name, fraction)
        await self._settle(seq)
        return await self._status(space, token=seq)
