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


DEPTH = 100  # how deep each space is searched, so a top-k item's place in the other space is known


def one_sided_correlation(top: Sequence[str], other: Sequence[str]) -> float | None:
    """Spearman's rho between the order of `top` (one space's top-k) and where `other` (the other
    space's deeper ranked list) puts those items; an item beyond `other` ranks tied last. The k items
    are chosen by one space only, so unrelated spaces give about 0. None when it is undefined: fewer
    than 2 items, or the other space puts them all in one place (all beyond its depth, say)."""
    top = list(dict.fromkeys(top))
    position: dict[str, int] = {}
    for i, item in enumerate(other):
        position.setdefault(item, i)
    theirs = [position.get(item, len(other)) for item in top]
    if len(top) < 2 or len(set(theirs)) < 2:
        return None
    return _pearson(_ranks(list(range(len(top)))), _ranks(theirs))


def rank_correlation(old: Sequence[str], new: Sequence[str], k: int) -> float | None:
    """The symmetrised one-sided Spearman: old's top-k ranked by their places in new's list, and new's
    top-k by their places in old's, averaged over the sides that are defined. 1.0: the same order;
    about 0: unrelated; -1.0: reversed. None when neither side is defined (then it says nothing about
    order, and a comparison does not count the task). Pass lists deeper than k (DEPTH) so that an
    item one space ranks in its top k has a real place in the other."""
    sides = [r for r in (one_sided_correlation(old[:k], new), one_sided_correlation(new[:k], old)) if r is not None]
    return sum(sides) / len(sides) if sides else None


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
    return float(cov / (var_a * var_b) ** 0.5)  # callers pass lists that vary


@dataclass
class Comparison:
    """Running totals over tasks; `add` one task's two ranked answers (and its expected items, if any)."""

    k: int
    tasks: int = 0
    overlap_sum: float = 0.0
    correlation_sum: float = 0.0
    correlation_tasks: int = 0  # tasks whose rank correlation is defined; only these count in its mean
    labelled: int = 0
    hits: dict[str, dict[int, int]] = field(default_factory=lambda: {"old": {1: 0, 5: 0}, "new": {1: 0, 5: 0}})

    def add(self, old: Sequence[str], new: Sequence[str], expected: Sequence[str] = (), k: int = 0) -> None:
        """One task's two ranked answers, each as deep as it goes (DEPTH for a comparison; overlap uses
        the top k); `k` overrides the comparison's (a shadowed Discover's top_k)."""
        k = k or self.k
        self.tasks += 1
        self.overlap_sum += overlap_at_k(old, new, k)
        rho = rank_correlation(old, new, k)
        if rho is not None:
            self.correlation_sum += rho
            self.correlation_tasks += 1
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
        """Mean over the tasks where it is defined (`correlation_tasks`); 0.0 when there are none."""
        return self.correlation_sum / self.correlation_tasks if self.correlation_tasks else 0.0

    def accuracy(self, side: str, cut: int) -> float:
        return self.hits[side][cut] / self.labelled if self.labelled else 0.0
