"""One vector space's in-memory index: vectors, HNSW graph, attribute columns and the planner that
chooses between exact scoring and HNSW by how many rows the constraints allow."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from registry.domain.models import CatalogChange, CatalogEntry
from registry.index import exact
from registry.index.columns import AttributeColumns, Mask
from registry.index.gc_pause import paused_gc
from registry.index.hnsw import HnswGraph, HnswParams


@dataclass(frozen=True, slots=True)
class PlannerParams:
    exact_always_rows: int = 4096  # this few allowed rows: exact scoring is cheaper than any graph walk
    exact_max_rows: int = 16384  # up to this many, exact too unless the filter is loose (below)
    hnsw_min_selectivity: float = 0.2  # a filter this loose post-filters HNSW results without losing recall
    oversample: float = 1.5  # extra HNSW candidates beyond k / selectivity
    max_rounds: int = 4  # widenings before falling back to exact


@dataclass(frozen=True, slots=True)
class SearchResult:
    rows: npt.NDArray[np.int64]
    similarities: npt.NDArray[np.float32]
    plan: str
    ef: int = 0
    rounds: int = 0


class SpaceIndex:
    """Not thread-safe: the server applies changes and searches on one event-loop thread."""

    def __init__(self, dim: int, hnsw: HnswParams | None = None, planner: PlannerParams | None = None):
        self.dim = dim
        self.hnsw_params = hnsw or HnswParams()
        self.planner = planner or PlannerParams()
        capacity = self.hnsw_params.initial_capacity
        self.graph = HnswGraph(dim, self.hnsw_params)
        self.columns = AttributeColumns(capacity)
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.entries: list[CatalogEntry | None] = []
        self.row_of: dict[str, int] = {}  # capability id -> row
        self.caps_of_agent: dict[str, set[str]] = {}  # agent id -> its capability ids here
        self._free_rows: list[int] = []
        self._applied_seq: dict[str, int] = {}  # capability id -> seq of the last change applied to it
        self._pending_rows: list[int] | None = None  # inside graph_batch(): rows whose graph insert waits
        self.watermark = 0

    @classmethod
    def restore(
        cls,
        dim: int,
        hnsw: HnswParams,
        planner: PlannerParams,
        *,
        graph: HnswGraph,
        vectors: npt.NDArray[np.float32],
        entries: list[CatalogEntry | None],
        watermark: int,
    ) -> SpaceIndex:
        """An index from a snapshot's parts (see registry/index/snapshot.py); None entries are free rows."""
        index = cls(dim, hnsw, planner)
        index.graph = graph
        index._reserve(len(entries))
        index.vectors[: len(entries)] = vectors
        index.entries = list(entries)
        rows: list[int] = []
        live: list[CatalogEntry] = []
        for row, entry in enumerate(entries):
            if entry is None:
                index._free_rows.append(row)
                continue
            rows.append(row)
            live.append(entry)
            index.row_of[entry.capability.id] = row
            index.caps_of_agent.setdefault(entry.agent_id, set()).add(entry.capability.id)
        index.columns.set_fresh_rows(rows, live)
        index._applied_seq = dict.fromkeys(index.row_of, watermark)
        index.watermark = watermark
        return index

    @property
    def size(self) -> int:
        """Rows ever allocated (live or free)."""
        return len(self.entries)

    @property
    def live_count(self) -> int:
        return len(self.row_of)

    def apply(self, change: CatalogChange) -> None:
        """Apply one committed change. Changes may arrive out of order; a row never goes back to an
        older state than one already applied."""
        for entry in change.upserts:
            if self._applied_seq.get(entry.capability.id, -1) < change.seq:
                self._upsert(entry)
                self._applied_seq[entry.capability.id] = change.seq
        for cap_id in change.removed:
            if self._applied_seq.get(cap_id, -1) < change.seq:
                self._remove(cap_id)
                self._applied_seq[cap_id] = change.seq
        self.watermark = max(self.watermark, change.seq)

    @contextmanager
    def graph_batch(self, num_threads: int = 2) -> Iterator[None]:
        """Inside, new vectors go into the HNSW graph together at the end, in one multi-threaded call: a
        follower applying a bulk registration inserts a thousand rows at once instead of one at a time.
        Nothing may search the index inside (the follower applies on the event loop without yielding)."""
        if self._pending_rows is not None:  # already batching: the outer batch flushes
            yield
            return
        self._pending_rows = []
        try:
            yield
        finally:
            rows, self._pending_rows = list(dict.fromkeys(self._pending_rows)), None
            if rows:
                labels = np.array(rows, dtype=np.int64)
                self.graph.add(labels, self.vectors[labels], num_threads=num_threads)

    def replace_agent(self, agent_id: str, entries: list[CatalogEntry], seq: int) -> tuple[str, ...]:
        """Make the agent's rows exactly `entries` (none: the agent is gone), as of change `seq`; returns
        the ids of the capabilities it removed.

        An entry without a vector keeps the row's vector; it must then already be in the index."""
        wanted = {entry.capability.id for entry in entries}
        gone = tuple(cap_id for cap_id in self.caps_of_agent.get(agent_id, ()) if cap_id not in wanted)
        self.apply(CatalogChange(seq=seq, upserts=tuple(entries), removed=gone))
        return gone

    def digest(self) -> str:
        """A fingerprint of what Discover can return: each capability's id, embedded text and agent state.
        Replicas at one position have equal digests; `RegistryStore.index_digest` computes the same from
        the database."""
        return catalog_digest(
            (entry.capability.id, entry.text_sha256, entry.status.value, entry.capability.updated_at)
            for entry in self.entries
            if entry is not None
        )

    def text_hashes(self, agent_ids: set[str]) -> dict[str, str]:
        """capability id -> hash of its embedded text, for the rows of these agents."""
        hashes = {}
        for agent_id in agent_ids:
            for cap_id in self.caps_of_agent.get(agent_id, ()):
                hashes[cap_id] = self.entry(self.row_of[cap_id]).text_sha256
        return hashes

    def bulk_load(self, entries: list[CatalogEntry], watermark: int, num_threads: int = 2) -> None:
        """Build from the stored catalog (at start-up, or for a space created while serving), in one HNSW
        batch, with the cyclic GC paused (see gc_pause)."""
        with paused_gc():
            self._bulk_load(entries, watermark, num_threads)

    def _bulk_load(self, entries: list[CatalogEntry], watermark: int, num_threads: int) -> None:
        rows = np.arange(self.size, self.size + len(entries), dtype=np.int64)
        self._reserve(self.size + len(entries))
        for row, entry in zip(rows.tolist(), entries, strict=True):
            assert entry.vector is not None
            self.entries.append(replace(entry, vector=None))  # the vector lives in self.vectors only
            self.row_of[entry.capability.id] = row
            self.caps_of_agent.setdefault(entry.agent_id, set()).add(entry.capability.id)
            self.vectors[row] = _unit(entry.vector)
            self._applied_seq[entry.capability.id] = watermark
        self.columns.set_fresh_rows(rows.tolist(), entries)
        if entries:
            self.graph.add(rows, self.vectors[rows], num_threads=num_threads)
        self.watermark = max(self.watermark, watermark)

    def search(self, query: npt.NDArray[np.float32], k: int, mask: Mask) -> SearchResult:
        """The k allowed rows most similar to `query`, best first. Never fewer than min(k, allowed)."""
        allowed = int(np.count_nonzero(mask))
        k = min(k, allowed)
        if k == 0:
            return SearchResult(np.empty(0, np.int64), np.empty(0, np.float32), "empty")
        query = _unit(query)
        selectivity = allowed / max(self.live_count, 1)
        if allowed <= self.planner.exact_always_rows or (
            allowed <= self.planner.exact_max_rows and selectivity < self.planner.hnsw_min_selectivity
        ):
            rows, sims = exact.top_k(self.vectors, np.flatnonzero(mask), query, k)
            return SearchResult(rows, sims, "exact")
        fetch = (
            k if selectivity >= 1.0 else min(self.live_count, math.ceil(k / selectivity * self.planner.oversample) + k)
        )
        for round_ in range(self.planner.max_rounds):
            ef = max(self.hnsw_params.ef_search, fetch)
            try:
                rows, sims = self.graph.query(query, fetch, ef)
            except RuntimeError:  # fewer reachable than asked for; exact is always right
                break
            keep = mask[rows]
            if int(np.count_nonzero(keep)) >= k:
                rows, sims = rows[keep], sims[keep]
                order = np.lexsort((rows, -sims))[:k]
                return SearchResult(rows[order], sims[order], "hnsw", ef=ef, rounds=round_)
            if fetch >= self.live_count:
                break
            fetch = min(self.live_count, fetch * 4)
        rows, sims = exact.top_k(self.vectors, np.flatnonzero(mask), query, k)
        return SearchResult(rows, sims, "exact-fallback")

    def entry(self, row: int) -> CatalogEntry:
        entry = self.entries[row]
        assert entry is not None
        return entry

    def _upsert(self, entry: CatalogEntry) -> None:
        row = self.row_of.get(entry.capability.id)
        if row is None:
            if entry.vector is None:
                raise ValueError(f"capability {entry.capability.id} is new to the index but came without a vector")
            row = self._free_rows.pop() if self._free_rows else self._append_row()
            self.row_of[entry.capability.id] = row
            self.caps_of_agent.setdefault(entry.agent_id, set()).add(entry.capability.id)
        self.entries[row] = replace(entry, vector=None)
        self.columns.set_row(row, entry)
        if entry.vector is not None:
            self.vectors[row] = _unit(entry.vector)
            if self._pending_rows is not None:
                self._pending_rows.append(row)
            else:
                self.graph.add(np.array([row], dtype=np.int64), self.vectors[row : row + 1])

    def _remove(self, cap_id: str) -> None:
        row = self.row_of.pop(cap_id, None)
        if row is None:
            return
        entry = self.entry(row)
        caps = self.caps_of_agent.get(entry.agent_id, set())
        caps.discard(cap_id)
        if not caps:
            self.caps_of_agent.pop(entry.agent_id, None)
        if self._pending_rows is not None and row in self._pending_rows:  # added in this batch: never insert it
            self._pending_rows = [r for r in self._pending_rows if r != row]
        self.graph.delete(row)
        self.columns.clear_row(row)
        self.entries[row] = None
        self._free_rows.append(row)

    def _append_row(self) -> int:
        self._reserve(self.size + 1)
        self.entries.append(None)
        return self.size - 1

    def _reserve(self, rows: int) -> None:
        if rows <= self.vectors.shape[0]:
            return
        capacity = max(rows, self.vectors.shape[0] * 2)
        grown = np.zeros((capacity, self.dim), dtype=np.float32)
        grown[: self.vectors.shape[0]] = self.vectors
        self.vectors = grown
        self.columns.grow(capacity)


def catalog_digest(rows: Iterable[tuple[str, str, str, datetime | None]]) -> str:
    """sha256 over sorted (capability id, text hash, agent status, capability update time) rows."""
    digest = hashlib.sha256()
    for cap_id, text_hash, status, updated in sorted(rows):
        stamp = updated.astimezone(UTC).isoformat(timespec="microseconds") if updated else ""
        digest.update(f"{cap_id}|{text_hash}|{status}|{stamp}\n".encode())
    return digest.hexdigest()


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
