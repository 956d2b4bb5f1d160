"""Exact inner-product top-k over a subset of rows: the truth HNSW is measured against, and the
fast path when few rows are allowed."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

GATHER_BELOW_SHARE = 4  # gather the rows when they are under a quarter of the block they span
Labels = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


def top_k(
    vectors: npt.NDArray[np.float32], rows: Labels, query: npt.NDArray[np.float32], k: int
) -> tuple[Labels, Scores]:
    """The k rows of `rows` with the highest inner product with `query`, best first; ties by row number."""
    if k <= 0 or rows.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    # `rows` is ascending (np.flatnonzero). Gathering them copies every allowed vector; when they are a fair
    # share of the block they lie in, scoring the whole contiguous block and picking the rows' scores is
    # cheaper (a view, one BLAS call, no copy).
    span = int(rows[-1]) + 1
    gather = rows.size * GATHER_BELOW_SHARE < span
    scores = vectors[rows] @ query if gather else (vectors[:span] @ query)[rows]
    if k < rows.size:
        # Keep every row tied with the k-th score, so the tie-break below is exact.
        kth = np.partition(scores, rows.size - k)[rows.size - k]
        keep = np.flatnonzero(scores >= kth)
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order].astype(np.int64), scores[order].astype(np.float32)
