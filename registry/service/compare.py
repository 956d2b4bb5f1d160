"""How two vector spaces' answers to the same tasks differ: overlap@k, rank correlation, and with labels
each space's top-1 and top-5 accuracy. Pure functions over ranked lists, so the same arithmetic serves
`capreg vectors compare` and shadow traffic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def overlap_at_k(old: Sequence[str], new: Sequence[str], k: int) -> float:
    """|top-k of old ∩ top-k of new| / k: 1.0 when both return the same k items in any order."""
    if k <= 0:
        return 1.0
    return len(set(old[:k]) & set(new[:k])) / k


def rank_correlation(old: Sequence[str], new: Sequence[str], k: int) -> float:
    """Spearman's rho over the union of both top-k lists, an item missing from a list ranked k+1 there.
    1.0: same order; about 0: unrelated; -1.0: reversed. Two empty lists agree (1.0)."""
    items = list(dict.fromkeys([*old[:k], *new[:k]]))
    n = len(items)
    if n < 2:
        return 1.0
    old_rank = {item: i for i, item in enumerate(old[:k])}
    new_rank = {item: i for i, item in enumerate(new[:k])}
    a = [old_rank.get(item, k) for item in items]
    b = [new_rank.get(item, k) for item in items]
    return _pearson(_ranks(a), _ranks(b))


def _ranks(values: list[int]) -> list[float]:
    """Average ranks, so ties (several items missing from one list) count fairly."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for position in range(i, j + 1):
            ranks[order[position]] = (i + j) / 2
        i = j + 1
    return ranks


def _pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    mean_a, mean_b = sum(a) / n, sum(b) / n
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True))
    var_a = sum((x - mean_a) ** 2 for x in a)
    var_b = sum((y - mean_b) ** 2 for y in b)
    if var_a == 0 or var_b == 0:
        return 1.0 if var_a == var_b else 0.0
    return float(cov / (var_a * var_b) ** 0.5)


@dataclass
class Comparison:
    """Running totals over tasks; `add` one task's two ranked answers (and its expected items, if any)."""

    k: int
    tasks: int = 0
    overlap_sum: float = 0.0
    correlation_sum: float = 0.0
    labelled: int = 0
    hits: dict[str, dict[int, int]] = field(default_factory=lambda: {"old": {1: 0, 5: 0}, "new": {1: 0, 5: 0}})

    def add(self, old: Sequence[str], new: Sequence[str], expected: Sequence[str] = (), k: int = 0) -> None:
        """One task's two ranked answers; `k` overrides the comparison's (a shadowed Discover's top_k)."""
        k = k or self.k
        self.tasks += 1
        self.overlap_sum += overlap_at_k(old, new, k)
        self.correlation_sum += rank_correlation(old, new, k)
        if expected:
            self.labelled += 1
            wanted = set(expected)
            for side, ranked in (("old", old), ("new", new)):
                for cut in (1, 5):
                    if wanted & set(ranked[:cut]):
                        self.hits[side][cut] += 1

    @property
    def overlap(self) -> float:
        return self.overlap_sum / self.tasks if self.tasks else 0.0

    @property
    def correlation(self) -> float:
        return self.correlation_sum / self.tasks if self.tasks else 0.0

    def accuracy(self, side: str, cut: int) -> float:
        return self.hits[side][cut] / self.labelled if self.labelled else 0.0
