"""Outcome-aware routing: outcomes reported through ReportOutcome teach Discover which capability does well
on which kind of task, per tenant and per vector space.

- `OutcomeIndex`: in memory, per (space, tenant), the unit task vectors of past outcomes, their capability,
  score and latency, and each capability's running totals. `votes` takes the k outcomes nearest to a task
  (cosine), weighs each by max(sim, 0)^4, and gives each capability among them its signed share of that
  evidence plus a little of its overall rate (`Votes`). Loaded at start-up
  from the database and fed by the change-log follower (entity "outcome"), so every replica learns every
  outcome, the same way it learns every agent.
- `DiscoverMemory`: which task a recent Discover answered (its discover_id), so an outcome can name it.
- `OutcomeService.report`: validate, find the task's vector, store, wait for this process's index.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from registry.domain import validation as v
from registry.domain.errors import FailedPrecondition, InvalidArgument
from registry.service.calls import settle
from registry.service.serving import ServingSpace, Spaces
from registry.store.outcomes import DEFAULT_MAX_PER_CAPABILITY, NewOutcome, OutcomeRow, OutcomeStore

log = logging.getLogger(__name__)

NEIGHBOURS = 10  # past outcomes that vote on a Discover
WEIGHT_POWER = 4  # w = max(similarity, 0) ** WEIGHT_POWER: the nearest tasks count most
PRIOR_SIMILARITY = 0.5  # a capability's overall rate weighs as much as one outcome at this similarity
PRIOR_WEIGHT = PRIOR_SIMILARITY**WEIGHT_POWER
MAX_COST_USD = 1_000_000.0
MAX_LATENCY_MS = v.MAX_LATENCY_MS


@dataclass(frozen=True, slots=True)
class CapabilityRecord:
    """A capability's outcomes for one tenant in one space: how many, their summed score, their summed
    reported latency (and how many reported one)."""

    count: int = 0
    score_sum: float = 0.0
    latency_count: int = 0
    latency_sum_ms: float = 0.0

    def changed(self, score: float, latency_ms: float | None, sign: int) -> CapabilityRecord:
        has_latency = latency_ms is not None
        return CapabilityRecord(
            self.count + sign,
            self.score_sum + sign * score,
            self.latency_count + sign * has_latency,
            self.latency_sum_ms + sign * (latency_ms or 0.0),
        )

    @property
    def rate(self) -> float:
        """The mean score shrunk toward 0.5 (Laplace): 0.5 with no outcomes, never exactly 0 or 1."""
        return (self.score_sum + 1.0) / (self.count + 2.0)

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_sum_ms / self.latency_count if self.latency_count else None


@dataclass(frozen=True, slots=True)
class Votes:
    """What past outcomes say about one task. The k outcomes nearest to it weigh w = max(similarity, 0) **
    WEIGHT_POWER each, W in all. A capability c with outcomes among them votes

        vote(c) = (sum of w * (2 * score - 1) over c's outcomes among them + m * (2 * rate(c) - 1)) / (W + m)

    in [-1, 1]: its share of the neighbourhood's evidence, signed by how it did there, plus its overall
    rate (its mean score for this tenant, shrunk toward 0.5) weighing m = PRIOR_SIMILARITY ** WEIGHT_POWER,
    as much as one outcome of a task at that similarity. Near-identical tasks decide; where the evidence is
    loose or split, how the capability does overall tips the balance (which is what lets a strong model
    beat a cheap one that happened to do as well on a few neighbours). A capability with no outcomes near
    the task votes 0: its overall rate says nothing about whether it fits this kind of task (for tools,
    most outcomes are about fit, not strength)."""

    evidence: dict[str, float]  # capability -> sum of w * (2 * score - 1) over its outcomes among the k
    total_weight: float  # W
    records: dict[str, CapabilityRecord]
    prior_weight: float

    def __bool__(self) -> bool:
        return bool(self.records)

    @property
    def neighbours(self) -> set[str]:
        """The capabilities with outcomes among the task's nearest."""
        return set(self.evidence)

    def of(self, capability_id: str) -> float:
        record = self.records.get(capability_id)
        evidence = self.evidence.get(capability_id)
        if record is None or evidence is None:
            return 0.0
        prior = self.prior_weight * (2.0 * record.rate - 1.0)
        return (evidence + prior) / (self.total_weight + self.prior_weight)

    def count(self, capability_id: str) -> int:
        record = self.records.get(capability_id)
        return record.count if record is not None else 0

    def mean_latency_ms(self, capability_id: str) -> float | None:
        record = self.records.get(capability_id)
        return record.mean_latency_ms if record is not None else None


NO_VOTES = Votes({}, 0.0, {}, 0.0)


@dataclass(frozen=True, slots=True)
class KeptOutcome:
    capability_id: str
    score: float
    latency_ms: float | None
    unit: npt.NDArray[np.float32]


class TenantOutcomes:
    """One tenant's outcomes in one space. At most `max_per_capability` per capability, the newest."""

    def __init__(self, dim: int, max_per_capability: int):
        self._dim = dim
        self._max = max_per_capability
        self._items: dict[str, KeptOutcome] = {}
        self._by_capability: dict[str, deque[str]] = {}
        self.records: dict[str, CapabilityRecord] = {}
        self._matrix: npt.NDArray[np.float32] | None = None
        self._caps: list[str] = []
        self._scores: npt.NDArray[np.float64] = np.zeros(0)

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self,
        outcome_id: str,
        capability_id: str,
        score: float,
        vector: npt.NDArray[np.float32],
        latency_ms: float | None = None,
    ) -> None:
        if outcome_id in self._items or vector.shape != (self._dim,):
            return
        norm = float(np.linalg.norm(vector))
        if not norm > 0 or not math.isfinite(norm):
            return
        self._items[outcome_id] = KeptOutcome(capability_id, score, latency_ms, (vector / norm).astype(np.float32))
        self._count(capability_id, score, latency_ms, +1)
        kept = self._by_capability.setdefault(capability_id, deque())
        kept.append(outcome_id)
        while len(kept) > self._max:
            dropped = self._items.pop(kept.popleft())
            self._count(capability_id, dropped.score, dropped.latency_ms, -1)
        self._matrix = None

    def forget(self, capability_id: str) -> None:
        """A removed capability's outcomes: its id is never reused, so they can only mislead."""
        for outcome_id in self._by_capability.pop(capability_id, ()):
            self._items.pop(outcome_id, None)
        if self.records.pop(capability_id, None) is not None:
            self._matrix = None

    def _count(self, capability_id: str, score: float, latency_ms: float | None, sign: int) -> None:
        record = self.records.get(capability_id, CapabilityRecord()).changed(score, latency_ms, sign)
        if record.count:
            self.records[capability_id] = record
        else:
            self.records.pop(capability_id, None)

    def votes(self, query: npt.NDArray[np.float32], k: int) -> Votes:
        if not self._items:
            return NO_VOTES
        if self._matrix is None:
            values = list(self._items.values())
            self._caps = [kept.capability_id for kept in values]
            self._scores = np.array([kept.score for kept in values], dtype=np.float64)
            self._matrix = np.stack([kept.unit for kept in values])
        sims = self._matrix @ query
        nearest = np.argpartition(-sims, k)[:k] if len(sims) > k else np.arange(len(sims))
        weights = np.maximum(sims[nearest].astype(np.float64), 0.0) ** WEIGHT_POWER
        found: dict[str, float] = {}
        for row, weight in zip(nearest.tolist(), weights.tolist(), strict=True):
            cap = self._caps[row]
            found[cap] = found.get(cap, 0.0) + weight * (2.0 * float(self._scores[row]) - 1.0)
        # The records themselves, not a copy per Discover: only the event-loop thread changes them, and a
        # search uses its Votes within one turn of the loop.
        return Votes(found, float(weights.sum()), self.records, PRIOR_WEIGHT)


class OutcomeIndex:
    """Every live space's outcomes, per tenant; only the event-loop thread changes it."""

    def __init__(self, store: OutcomeStore, max_per_capability: int = DEFAULT_MAX_PER_CAPABILITY):
        self._store = store
        self._max = max_per_capability
        self._spaces: dict[int, dict[str, TenantOutcomes]] = {}
        self.position = 0  # every outcome logged up to this change-log seq is here

    def add(self, row: OutcomeRow) -> None:
        tenants = self._spaces.setdefault(row.space_id, {})
        outcomes = tenants.get(row.tenant)
        if outcomes is None:
            outcomes = tenants[row.tenant] = TenantOutcomes(row.task_vector.shape[0], self._max)
        outcomes.add(row.id, row.capability_id, row.score, row.task_vector, row.latency_ms)

    def forget(self, capability_ids: list[str]) -> None:
        """Capabilities that were removed or replaced: their outcomes leave every space and tenant."""
        for tenants in self._spaces.values():
            for outcomes in tenants.values():
                for capability_id in capability_ids:
                    outcomes.forget(capability_id)

    def count(self, space_id: int, tenant: str) -> int:
        found = self._spaces.get(space_id, {}).get(tenant)
        return len(found) if found is not None else 0

    def votes(self, space_id: int, tenant: str, query: npt.NDArray[np.float32], k: int = NEIGHBOURS) -> Votes:
        """What this tenant's past outcomes in this space say about `query` (see `Votes`); empty (false)
        with no outcomes, the cold start."""
        found = self._spaces.get(space_id, {}).get(tenant)
        if found is None:
            return NO_VOTES
        norm = float(np.linalg.norm(query))
        if not norm > 0 or not math.isfinite(norm):
            return NO_VOTES
        return found.votes((query / norm).astype(np.float32), k)

    async def load(self, space_ids: list[int]) -> None:
        """At start-up, before the follower starts: the position first, then the rows (a row logged
        between the two is read again by the follower and added once)."""
        self.position = await asyncio.to_thread(self._store.last_seq)
        for space_id in space_ids:
            for row in await asyncio.to_thread(self._store.of_space, space_id):
                self.add(row)

    async def refresh(self) -> None:
        """The follower saw new outcomes: read those logged after our position, and add them."""
        while True:
            changes = await asyncio.to_thread(self._store.changes_after, self.position)
            if not changes:
                return
            ids = [c.entity_id for c in changes if c.entity == "outcome"]
            for row in await asyncio.to_thread(self._store.by_ids, ids):
                self.add(row)
            self.position = changes[-1].seq


@dataclass(frozen=True, slots=True)
class RememberedTask:
    tenant: str
    space: str
    vector: npt.NDArray[np.float32]
    text: str | None
    at: float


class DiscoverMemory:
    """discover_id -> the task a Discover answered, for `ttl_s` seconds, the newest `size` of them."""

    def __init__(self, size: int = 10_000, ttl_s: float = 300.0):
        self._size = size
        self._ttl_s = ttl_s
        self._tasks: OrderedDict[str, RememberedTask] = OrderedDict()

    def remember(self, tenant: str, space: str, vector: npt.NDArray[np.float32], text: str | None) -> str:
        discover_id = uuid.uuid4().hex
        self._tasks[discover_id] = RememberedTask(tenant, space, vector, text, time.monotonic())
        while len(self._tasks) > self._size:
            self._tasks.popitem(last=False)
        return discover_id

    def recall(self, discover_id: str, tenant: str) -> RememberedTask | None:
        """The task, if this server answered it for this tenant within the last `ttl_s` seconds."""
        task = self._tasks.get(discover_id)
        if task is None or task.tenant != tenant or time.monotonic() - task.at > self._ttl_s:
            return None
        return task


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    tenant: str
    capability_id: str
    discover_id: str | None = None
    text: str | None = None
    vector: npt.NDArray[np.float32] | None = None
    vector_space: str = ""
    success: bool | None = None
    score: float | None = None
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None


class OutcomeService:
    def __init__(
        self,
        store: OutcomeStore,
        spaces: Spaces,
        memory: DiscoverMemory,
        settle: Callable[[int], Awaitable[None]],
    ):
        self._store = store
        self._spaces = spaces
        self._memory = memory
        self._settle_fn = settle

    async def report(self, report: OutcomeReport) -> tuple[str, int]:
        """Store one outcome; returns (outcome id, consistency token) once this process's index has it."""
        tenant = v.tenant_or_default(report.tenant, "tenant")
        score = _validate(report)
        live, vector, text = await self._task(report, tenant)
        outcome = NewOutcome(
            tenant=tenant,
            capability_id=report.capability_id,
            space_id=live.space.id,
            task_vector=vector,
            score=score,
            task_text=text,
            latency_ms=report.latency_ms,
            cost_usd=report.cost_usd,
            input_tokens=report.input_tokens,
            output_tokens=report.output_tokens,
        )
        outcome_id, seq = await asyncio.to_thread(self._store.record, outcome)
        await self._settle(seq)
        return outcome_id, seq

    async def _task(
        self, report: OutcomeReport, tenant: str
    ) -> tuple[ServingSpace, npt.NDArray[np.float32], str | None]:
        if report.vector_space:
            v.check_name(report.vector_space, "vector_space")
        if report.discover_id is not None:
            task = self._memory.recall(report.discover_id, tenant) if report.discover_id else None
            if task is None or task.space not in self._spaces:
                raise FailedPrecondition(
                    "this server does not know that discover_id (it is unknown, another tenant's, from another "
                    "server, or more than a few minutes old): send the task's text instead",
                    field="discover_id",
                )
            return self._spaces.get(task.space), task.vector, task.text
        live = self._spaces.get(report.vector_space) if report.vector_space else self._spaces.serving
        if report.vector is not None:
            vector = np.asarray(report.vector, dtype=np.float32)
            v.validate_vector(vector, live.space.dim, "vector.values")
            return live, vector, None
        if report.text is None:
            raise InvalidArgument("task", "give the task: discover_id, text or vector")
        v.check_text(report.text, "text", v.MAX_QUERY_TEXT, required=True)
        vector = await live.batcher.embed(report.text)
        return live, vector, report.text

    async def _settle(self, token: int) -> None:
        await settle(self._settle_fn, token)


def _validate(report: OutcomeReport) -> float:
    """Everything but the task; returns the score."""
    if not report.capability_id:
        raise InvalidArgument("capability_id", "must name the capability the task was given to")
    v.check_id(report.capability_id, "capability_id")
    if report.success is not None and report.score is not None:
        raise InvalidArgument("score", "give success or score, not both")
    if report.success is None and report.score is None:
        raise InvalidArgument("score", "give success (true or false) or a score between 0 and 1")
    if report.score is not None:
        v.check_number(report.score, "score", 0.0, 1.0)
    if report.latency_ms is not None:
        v.check_number(report.latency_ms, "latency_ms", 0.0, MAX_LATENCY_MS)
    if report.cost_usd is not None:
        v.check_number(report.cost_usd, "cost_usd", 0.0, MAX_COST_USD)
    for name, tokens in (("input_tokens", report.input_tokens), ("output_tokens", report.output_tokens)):
        if tokens is not None and not 0 <= tokens <= v.MAX_TOKENS:
            raise InvalidArgument(name, f"must be between 0 and {v.MAX_TOKENS}")
    if report.score is not None:
        return report.score
    return 1.0 if report.success else 0.0
