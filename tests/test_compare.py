"""The comparison arithmetic behind `capreg vectors compare` and shadow traffic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import spearmanr

from registry.service.compare import Comparison, overlap_at_k, rank_correlation

ITEMS = st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10)


def test_identical_answers_agree_fully_and_reversed_ones_disagree() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    assert overlap_at_k(ranked, ranked, 5) == 1.0
    assert rank_correlation(ranked, ranked, 5) == pytest.approx(1.0)
    assert overlap_at_k(ranked, ranked[::-1], 5) == 1.0
    assert rank_correlation(ranked, ranked[::-1], 5) == pytest.approx(-1.0)
    assert overlap_at_k(ranked, ["v", "w", "x", "y", "z"], 5) == 0.0
    assert rank_correlation(ranked, ["v", "w", "x", "y", "z"], 5) < 0


@given(ITEMS, ITEMS, st.integers(1, 10))
def test_metrics_stay_in_range_and_are_symmetric(old: list[str], new: list[str], k: int) -> None:
    overlap = overlap_at_k(old, new, k)
    rho = rank_correlation(old, new, k)
    assert 0.0 <= overlap <= 1.0 and -1.0 - 1e-9 <= rho <= 1.0 + 1e-9
    assert overlap == overlap_at_k(new, old, k)
    assert rho == pytest.approx(rank_correlation(new, old, k))


@given(ITEMS, ITEMS, st.integers(2, 10))
def test_rank_correlation_is_spearmans_rho_with_missing_items_ranked_last(
    old: list[str], new: list[str], k: int
) -> None:
    items = list(dict.fromkeys([*old[:k], *new[:k]]))
    a = [old[:k].index(i) if i in old[:k] else k for i in items]
    b = [new[:k].index(i) if i in new[:k] else k for i in items]
    if len(items) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return  # scipy leaves a constant list undefined; ours calls it agreement or not, tested above
    assert rank_correlation(old, new, k) == pytest.approx(float(spearmanr(a, b).statistic))


def test_a_comparison_counts_accuracy_only_over_labelled_tasks() -> None:
    report = Comparison(k=5)
    report.add(["a", "b"], ["b", "a"], expected=["a"])  # old right at 1, new at 5
    report.add(["c"], ["d"], expected=["d"])  # new right at 1
    report.add(["e"], ["e"])  # unlabelled
    assert report.tasks == 3 and report.labelled == 2
    assert report.accuracy("old", 1) == 0.5 and report.accuracy("new", 1) == 0.5
    assert report.accuracy("old", 5) == 0.5 and report.accuracy("new", 5) == 1.0
    assert report.overlap == pytest.approx((2 / 5 + 0 + 1 / 5) / 3)
