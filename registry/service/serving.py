"""The serving vector space of this process: its row, its embedder, its template and its index."""

from __future__ import annotations

from dataclasses import dataclass

from registry.domain.models import VectorSpace
from registry.embedding.base import Embedder
from registry.index.space_index import SpaceIndex


@dataclass(slots=True)
class ServingSpace:
    space: VectorSpace
    embedder: Embedder
    index: SpaceIndex
