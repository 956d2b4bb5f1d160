"""A thin, typed wrapper over hnswlib that owns capacity growth and deleted labels."""

from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 128
    initial_capacity: int = 1024


class HnswGraph:
    """Inner-product HNSW over unit vectors. Labels are row numbers chosen by the caller; a deleted
    label may be added again, which revives its slot with the new vector."""

    def __init__(self, dim: int, params: HnswParams):
        self.dim = dim
        self.params = params
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=params.initial_capacity, ef_construction=params.ef_construction, M=params.m)
        self._index.set_num_threads(1)
        self._ef = params.ef_search
        self._index.set_ef(self._ef)
        self._deleted: set[int] = set()

    def save(self, path: str) -> None:
        self._index.save_index(path)

    @classmethod
    def load(cls, path: str, dim: int, params: HnswParams, deleted: set[int]) -> HnswGraph:
        """A graph saved by `save`; `deleted` names the labels it holds marked deleted."""
        graph = cls(dim, params)
        graph._index.load_index(path)
        graph._index.set_num_threads(1)
        graph._index.set_ef(graph._ef)
        graph._deleted = set(deleted)
        return graph

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    def add(self, labels: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32], num_threads: int = 1) -> None:
        """Insert or replace the vectors of these labels."""
        needed = int(labels.max()) + 1 if labels.size else 0
        if needed > self.capacity or self._index.get_current_count() + labels.size > self.capacity:
            self._index.resize_index(max(needed, self.capacity * 2, self._index.get_current_count() + labels.size))
        self._index.add_items(vectors, labels, num_threads=num_threads)
        self._deleted.difference_update(labels.tolist())

    def delete(self, label: int) -> None:
        if label not in self._deleted:
            try:
                self._index.mark_deleted(label)
            except RuntimeError:  # never inserted (its insert was still waiting in a batch): nothing to hide
                return
            self._deleted.add(label)

    def query(
        self, vector: npt.NDArray[np.float32], k: int, ef: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """k nearest labels by inner product, best first. Raises RuntimeError if fewer than k are reachable."""
        if ef != self._ef:
            self._index.set_ef(ef)
            self._ef = ef
        labels, distances = self._index.knn_query(vector, k=k, num_threads=1)  # one query: no thread pool
        # hnswlib's "ip" distance is 1 - <a, b>.
        return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)
