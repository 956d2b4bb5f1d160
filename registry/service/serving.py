"""The vector spaces live in this process: each one's row, embedder and index, and which one serves.

Every live space (building, ready or serving) has an index here, kept current by the change-log
follower, so a promotion is a pointer swap between two Discovers and a Discover may pin any of them.
Only the event-loop thread changes this."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry.domain.errors import NotFound
from registry.domain.models import VectorSpace
from registry.embedding.base import Embedder
from registry.embedding.batcher import EmbedBatcher
from registry.index.space_index import SpaceIndex


@dataclass(slots=True)
class ServingSpace:
    """One live space: its row, its embedder (with the micro-batcher concurrent requests share) and its
    index."""

    space: VectorSpace
    embedder: Embedder
    index: SpaceIndex
    batcher: EmbedBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = EmbedBatcher(self.embedder)


class Spaces:
    def __init__(self, live: list[ServingSpace], serving: str):
        self._live = {s.space.name: s for s in live}
        if serving not in self._live:
            raise ValueError(f"the serving space {serving!r} is not among the live ones {sorted(self._live)}")
        self._serving = serving

    @property
    def serving(self) -> ServingSpace:
        return self._live[self._serving]

    def get(self, name: str) -> ServingSpace:
        """A live space by name; NOT_FOUND names the ones there are."""
        found = self._live.get(name)
        if found is None:
            raise NotFound(
                f"vector space {name!r} is not live on this server; live: {', '.join(sorted(self._live))} "
                f"(serving: {self._serving}); `capreg vectors list` shows every space"
            )
        return found

    def live(self) -> list[ServingSpace]:
        """Every live space, the serving one first."""
        return [self.serving, *(s for name, s in sorted(self._live.items()) if name != self._serving)]

    def names(self) -> list[str]:
        return sorted(self._live)

    def __contains__(self, name: str) -> bool:
        return name in self._live

    def add(self, live: ServingSpace) -> None:
        self._live[live.space.name] = live

    def update(self, space: VectorSpace) -> None:
        """A new row for a live space (its state or shadow fraction changed)."""
        self._live[space.name].space = space

    def remove(self, name: str) -> None:
        if name == self._serving:
            raise ValueError(f"{name!r} serves; switch first")
        self._live.pop(name, None)

    def switch(self, name: str) -> None:
        """Serve `name` from the next Discover on (atomic: one assignment on the event loop)."""
        self.get(name)
        self._serving = name
