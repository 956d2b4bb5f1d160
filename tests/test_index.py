"""The in-memory index against exact search: recall, filters, deletions and the planner."""

from __future__ import annotations

import uuid

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from registry.domain.models import (
    AgentKind,
    AgentStatus,
    Capability,
    CatalogChange,
    CatalogEntry,
    Cost,
    DiscoverFilters,
)
from registry.index import exact
from registry.index.columns import constraint_mask
from registry.index.hnsw import HnswParams
from registry.index.space_index import PlannerParams, SpaceIndex
from tests.support import unit


def entry(
    vector: npt.NDArray[np.float32] | None,
    *,
    cap_id: str | None = None,
    tenant: str = "default",
    status: AgentStatus = AgentStatus.ACTIVE,
    tags: tuple[str, ...] = (),
    cost: float = 0.0,
    kind: AgentKind = AgentKind.TOOL,
) -> CatalogEntry:
    cap = Capability(name="c", version="1.0.0", id=cap_id or str(uuid.uuid4()), tags=tags, cost=Cost(per_call_usd=cost))
    return CatalogEntry(
        capability=cap,
        agent_id="agent",
        agent_name="agent",
        tenant=tenant,
        kind=kind,
        endpoint="",
        labels={},
        status=status,
        vector=vector,
    )


def clustered(n: int, dim: int, seed: int, latent: int = 24) -> npt.NDArray[np.float32]:
    """Unit vectors shaped like sentence embeddings: clusters in a low-dimensional latent space,
    projected up to `dim`, plus a little isotropic noise. (Isotropic Gaussians in 384 dimensions are
    far harder for any ANN index than real embeddings, and not what the registry serves.)"""
    rng = np.random.default_rng(seed)
    projection = np.random.default_rng(0).standard_normal((latent, dim))
    centres = np.random.default_rng(1).standard_normal((64, latent))
    z = centres[rng.integers(0, 64, n)] + 0.5 * rng.standard_normal((n, latent))
    points = z @ projection + 0.05 * np.sqrt(latent) * rng.standard_normal((n, dim))
    return unit(points.astype(np.float32))


def recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    return len(set(found.tolist()) & set(truth.tolist())) / max(len(truth), 1)


@pytest.fixture(scope="module")
def big_index() -> tuple[SpaceIndex, npt.NDArray[np.float32]]:
    vectors = clustered(4000, 384, seed=7)
    index = SpaceIndex(384, HnswParams(initial_capacity=64), PlannerParams(exact_always_rows=0, exact_max_rows=0))
    entries = [
        entry(v, tags=("even",) if i % 2 == 0 else ("rare",) if i % 100 == 1 else ()) for i, v in enumerate(vectors)
    ]
    index.bulk_load(entries, watermark=1)
    return index, vectors


def test_hnsw_recall_at_10_against_exact(big_index: tuple[SpaceIndex, npt.NDArray[np.float32]]) -> None:
    index, vectors = big_index
    queries = clustered(200, 384, seed=8)
    mask = index.columns.live[: index.size].copy()
    rows = np.flatnonzero(mask)
    total = 0.0
    for q in queries:
        result = index.search(q, 10, mask)
        assert result.plan == "hnsw" and len(result.rows) == 10
        truth, _ = exact.top_k(vectors, rows, q, 10)
        total += recall(result.rows, truth)
    assert total / len(queries) >= 0.99


@pytest.mark.parametrize("tag", ["even", "rare"])
def test_filtered_search_is_never_short_and_stays_accurate(
    big_index: tuple[SpaceIndex, npt.NDArray[np.float32]], tag: str
) -> None:
    index, vectors = big_index
    mask, exclusions = constraint_mask(index.columns, index.size, "default", DiscoverFilters(tags_all=(tag,)), 0, 0)
    allowed = np.flatnonzero(mask)
    assert exclusions == {"filter.tags_all": 4000 - len(allowed)}
    total = 0.0
    for q in clustered(50, 384, seed=9):
        result = index.search(q, 10, mask)
        assert len(result.rows) == min(10, len(allowed))
        assert mask[result.rows].all()
        truth, _ = exact.top_k(vectors, allowed, q, 10)
        total += recall(result.rows, truth)
    assert total / 50 >= 0.99


def test_planner_goes_exact_for_small_candidate_sets() -> None:
    vectors = clustered(300, 16, seed=1)
    index = SpaceIndex(16, planner=PlannerParams(exact_always_rows=100, exact_max_rows=100))
    index.bulk_load([entry(v, tags=("few",) if i < 50 else ()) for i, v in enumerate(vectors)], watermark=1)
    few, _ = constraint_mask(index.columns, index.size, "default", DiscoverFilters(tags_all=("few",)), 0, 0)
    everything, _ = constraint_mask(index.columns, index.size, "default", DiscoverFilters(), 0, 0)
    assert index.search(vectors[0], 5, few).plan == "exact"
    assert index.search(vectors[0], 5, everything).plan == "hnsw"
    nothing = np.zeros(index.size, dtype=np.bool_)
    assert index.search(vectors[0], 5, nothing).plan == "empty"


def test_exact_top_k_breaks_ties_by_row() -> None:
    vectors = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    rows, scores = exact.top_k(vectors, np.arange(4), np.array([1, 0], dtype=np.float32), 2)
    assert rows.tolist() == [0, 1] and scores.tolist() == [1.0, 1.0]


def test_out_of_order_changes_never_regress_a_row() -> None:
    index = SpaceIndex(4)
    v = unit(np.array([1, 0, 0, 0], dtype=np.float32))
    index.apply(CatalogChange(seq=5, upserts=(entry(v, cap_id="c1", status=AgentStatus.DRAINING),)))
    index.apply(CatalogChange(seq=3, upserts=(entry(v, cap_id="c1"),)))  # older: ignored
    assert index.entry(index.row_of["c1"]).status == AgentStatus.DRAINING
    index.apply(CatalogChange(seq=7, removed=("c1",)))
    index.apply(CatalogChange(seq=6, upserts=(entry(v, cap_id="c1"),)))  # older than the removal
    assert "c1" not in index.row_of and index.watermark == 7


DIM = 8
vectors_st = st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=DIM, max_size=DIM).filter(
    lambda xs: sum(x * x for x in xs) > 1e-3
)


class IndexMachine(RuleBasedStateMachine):
    """Random upserts, status changes and removals; every search must equal exact search over the
    rows the model says are allowed, and removed rows never come back."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.index = SpaceIndex(
            DIM, HnswParams(initial_capacity=4, ef_search=64), PlannerParams(exact_always_rows=3, exact_max_rows=3)
        )
        self.model: dict[str, tuple[npt.NDArray[np.float32], AgentStatus, str]] = {}
        self.removed: set[str] = set()
        self.seq = 0

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    @rule(target=ids, vector=vectors_st, tenant=st.sampled_from(["a", "b"]))
    def add(self, vector: list[float], tenant: str) -> str:
        cap_id = str(uuid.uuid4())
        v = np.array(vector, dtype=np.float32)
        self.index.apply(CatalogChange(seq=self._next(), upserts=(entry(v, cap_id=cap_id, tenant=tenant),)))
        self.model[cap_id] = (unit(v), AgentStatus.ACTIVE, tenant)
        return cap_id

    @rule(cap_id=ids, vector=vectors_st)
    def move(self, cap_id: str, vector: list[float]) -> None:
        if cap_id not in self.model:
            return
        v = np.array(vector, dtype=np.float32)
        _, status, tenant = self.model[cap_id]
        change = CatalogChange(seq=self._next(), upserts=(entry(v, cap_id=cap_id, status=status, tenant=tenant),))
        self.index.apply(change)
        self.model[cap_id] = (unit(v), status, tenant)

    @rule(cap_id=ids, status=st.sampled_from(list(AgentStatus)))
    def set_status(self, cap_id: str, status: AgentStatus) -> None:
        if cap_id not in self.model:
            return
        v, _, tenant = self.model[cap_id]
        self.index.apply(
            CatalogChange(seq=self._next(), upserts=(entry(None, cap_id=cap_id, status=status, tenant=tenant),))
        )
        self.model[cap_id] = (v, status, tenant)

    @rule(cap_id=ids)
    def remove(self, cap_id: str) -> None:
        self.index.apply(CatalogChange(seq=self._next(), removed=(cap_id,)))
        self.model.pop(cap_id, None)
        self.removed.add(cap_id)

    @rule(query=vectors_st, k=st.integers(1, 6), tenant=st.sampled_from(["a", "b"]))
    def search(self, query: list[float], k: int, tenant: str) -> None:
        q = unit(np.array(query, dtype=np.float32))
        mask, _ = constraint_mask(self.index.columns, self.index.size, tenant, DiscoverFilters(), 0, 0)
        result = self.index.search(q, k, mask)
        allowed = {cid: v for cid, (v, status, t) in self.model.items() if status == AgentStatus.ACTIVE and t == tenant}
        found = [self.index.entry(int(r)).capability.id for r in result.rows]
        assert len(found) == min(k, len(allowed))
        assert set(found) <= set(allowed)
        assert not set(found) & (self.removed - set(self.model))
        expected = sorted(allowed.values(), key=lambda v: -float(v @ q))
        got = sorted((float(s) for s in result.similarities), reverse=True)
        assert np.allclose(got, [float(v @ q) for v in expected[: len(got)]], atol=1e-5)

    @invariant()
    def sizes_agree(self) -> None:
        assert self.index.live_count == len(self.model)


IndexMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestIndexMachine = IndexMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300),
    st.floats(0.0, 1.0),
    st.integers(1, 20),
    st.integers(0, 2**31),
    st.booleans(),
)
def test_exact_top_k_equals_sorting_every_allowed_row(
    size: int, density: float, k: int, seed: int, with_ties: bool
) -> None:
    """Both of its paths (gathering the allowed rows, or scoring their whole block) against a plain sort by
    (-score, row), over masks from empty to full; tied scores included."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((size + 5, 8)).astype(np.float32)  # spare rows past the live ones
    if with_ties:
        vectors[: size // 2] = vectors[0]
    query = rng.standard_normal(8).astype(np.float32)
    rows = np.flatnonzero(rng.random(size) < density).astype(np.int64)
    got_rows, got_scores = exact.top_k(vectors, rows, query, k)
    scores = {int(r): float(vectors[r] @ query) for r in rows}
    expected = sorted(scores, key=lambda r: (-scores[r], r))[:k]
    assert got_rows.tolist() == expected
    assert np.allclose(got_scores, [scores[r] for r in expected], atol=1e-5)


def test_a_graph_batch_gives_the_same_index_as_inserting_one_row_at_a_time() -> None:
    """The follower inserts a batch's new vectors into HNSW in one call: adds, moves, removals and rows
    reused after a removal, all inside one batch, must leave an index that finds exactly what the
    row-at-a-time one finds."""
    rng = np.random.default_rng(11)
    planner = PlannerParams(exact_always_rows=0, exact_max_rows=0)  # HNSW always: the graph is what is tested
    one_at_a_time = SpaceIndex(32, HnswParams(initial_capacity=8), planner)
    batched = SpaceIndex(32, HnswParams(initial_capacity=8), planner)
    ids = [str(uuid.uuid4()) for _ in range(300)]
    changes = [
        CatalogChange(
            seq=1, upserts=tuple(entry(rng.standard_normal(32).astype(np.float32), cap_id=i) for i in ids[:200])
        )
    ]
    changes.append(CatalogChange(seq=2, removed=tuple(ids[:50])))
    changes.append(
        CatalogChange(
            seq=3, upserts=tuple(entry(rng.standard_normal(32).astype(np.float32), cap_id=i) for i in ids[200:])
        )
    )
    changes.append(
        CatalogChange(
            seq=4, upserts=tuple(entry(rng.standard_normal(32).astype(np.float32), cap_id=i) for i in ids[60:90])
        )
    )
    for change in changes:
        one_at_a_time.apply(change)
    with batched.graph_batch():
        for change in changes:
            batched.apply(change)
        assert batched.graph._index.get_current_count() == 0  # nothing reached the graph yet
    assert batched.live_count == one_at_a_time.live_count == 250
    everything = np.ones(batched.size, dtype=np.bool_)
    for cap_id in ids[50:]:
        row = batched.row_of[cap_id]
        query = batched.vectors[row]
        found = batched.search(query, 1, everything)
        assert found.plan == "hnsw" and batched.entry(int(found.rows[0])).capability.id == cap_id
        other = one_at_a_time.search(one_at_a_time.vectors[one_at_a_time.row_of[cap_id]], 1, everything)
        assert one_at_a_time.entry(int(other.rows[0])).capability.id == cap_id
    for cap_id in ids[:50]:
        assert cap_id not in batched.row_of
