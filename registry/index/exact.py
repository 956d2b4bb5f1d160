"""Exact inner-product top-k over a subset of rows: the truth HNSW is measured against, and the
fast path when few rows are allowed."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


def top_k(
    vectors: npt.NDArray[np.float32], rows: Labels, query: npt.NDArray[np.float32], k: int
) -> tuple[Labels, Scores]:
    """The k rows of `rows` with the highest inner product with `query`, best first; ties by row number."""
    if k <= 0 or rows.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = vectors[rows] @ query
    if k < rows.size:
        # Keep every row tied with the k-th score, so the tie-break below is exact.
        kth = np.partition(scores, rows.size - k)[rows.size - k]
        keep = np.flatnonzero(scores >= kth)
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order].astype(np.int64), scores[order].astype(np.float32)
