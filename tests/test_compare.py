"""The comparison arithmetic behind `capreg vectors compare` and shadow traffic."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from registry.service.compare import DEPTH, Comparison, one_sided_correlation, overlap_at_k, rank_correlation

ITEMS = st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10)
CATALOG = [f"item-{i}" for i in range(200)]


def test_identical_answers_agree_fully_and_reversed_ones_disagree() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    assert overlap_at_k(ranked, ranked, 5) == 1.0
    assert rank_correlation(ranked, ranked, 5) == pytest.approx(1.0)
    assert overlap_at_k(ranked, ranked[::-1], 5) == 1.0
    assert rank_correlation(ranked, ranked[::-1], 5) == pytest.approx(-1.0)


def test_disjoint_answers_without_deeper_lists_say_nothing_about_order() -> None:
    old, new = ["a", "b", "c", "d", "e"], ["v", "w", "x", "y", "z"]
    assert overlap_at_k(old, new, 5) == 0.0
    assert one_sided_correlation(old, new) is None  # every item beyond the other list: all tied
    assert rank_correlation(old, new, 5) is None
    assert rank_correlation(["a"], ["a"], 5) is None  # one item has no order
    report = Comparison(k=5)
    report.add(old, new)
    report.add(old, old)
    assert report.tasks == 2 and report.correlation_tasks == 1  # the undefined task is not counted
    assert report.correlation == pytest.approx(1.0)


def test_deeper_lists_give_disjoint_top_k_an_order() -> None:
    old = ["a", "b", "c", "x", "y", "z"]  # old's top 3 then, deeper, new's top 3 in new's order
    new = ["x", "y", "z", "a", "b", "c"]
    assert overlap_at_k(old, new, 3) == 0.0
    assert rank_correlation(old, new, 3) == pytest.approx(1.0)
    assert rank_correlation(old, ["z", "y", "x", "c", "b", "a"], 3) == pytest.approx(-1.0)


def test_one_side_counts_when_the_other_is_undefined() -> None:
    served = ["a", "b"]  # a served answer has only its top_k
    candidate = ["x", "y", "b", "a"]  # the candidate searched deeper
    assert one_sided_correlation(served, candidate) == pytest.approx(-1.0)
    assert one_sided_correlation(candidate[:2], served) is None  # x and y are both beyond the served list
    assert rank_correlation(served, candidate, 2) == pytest.approx(-1.0)


@given(ITEMS, ITEMS, st.integers(1, 10))
def test_metrics_stay_in_range_and_are_symmetric(old: list[str], new: list[str], k: int) -> None:
    overlap = overlap_at_k(old, new, k)
    rho = rank_correlation(old, new, k)
    assert 0.0 <= overlap <= 1.0
    assert overlap == overlap_at_k(new, old, k)
    swapped = rank_correlation(new, old, k)
    if rho is None:
        assert swapped is None
    else:
        assert -1.0 - 1e-9 <= rho <= 1.0 + 1e-9
        assert rho == pytest.approx(swapped)


@given(ITEMS, ITEMS, st.integers(2, 10))
def test_each_side_is_scipys_spearman_of_top_k_order_against_places_in_the_other(
    old: list[str], new: list[str], k: int
) -> None:
    sides = []
    for top, other in ((old[:k], new), (new[:k], old)):
        places = [other.index(item) if item in other else len(other) for item in top]
        if len(top) >= 2 and len(set(places)) >= 2:
            sides.append(float(spearmanr(range(len(top)), places).statistic))
    rho = rank_correlation(old, new, k)
    if not sides:
        assert rho is None
    else:
        assert rho == pytest.approx(sum(sides) / len(sides))


def _mean_rho(rng: random.Random, draws: int, noise: float | None, k: int = 5) -> tuple[float, int]:
    """Mean rank correlation over `draws` tasks on a 200-item catalog, each space searched DEPTH deep.
    noise None: the two rankings are independent permutations; else the new scores are the old ones
    plus `noise` times standard normal noise."""
    total, counted = 0.0, 0
    for _ in range(draws):
        if noise is None:
            old, new = CATALOG[:], CATALOG[:]
            rng.shuffle(old)
            rng.shuffle(new)
        else:
            scores = {item: rng.gauss(0, 1) for item in CATALOG}
            noisy = {item: s + noise * rng.gauss(0, 1) for item, s in scores.items()}
            old = sorted(CATALOG, key=scores.__getitem__, reverse=True)
            new = sorted(CATALOG, key=noisy.__getitem__, reverse=True)
        rho = rank_correlation(old[:DEPTH], new[:DEPTH], k)
        if rho is not None:
            total += rho
            counted += 1
    return total / counted, counted


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_independent_rankings_average_about_zero(seed: int) -> None:
    mean, counted = _mean_rho(random.Random(seed), 1000, None)
    assert counted >= 990  # five items in 200 rarely all fall beyond the other's top 100
    assert abs(mean) <= 0.05


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.5, 1.0, 2.0]))
def test_noisy_copies_correlate_positively(seed: int, noise: float) -> None:
    mean, _ = _mean_rho(random.Random(seed), 300, noise)
    assert mean > 0.05


def test_a_comparison_counts_accuracy_only_over_labelled_tasks() -> None:
    report = Comparison(k=5)
    report.add(["a", "b"], ["b", "a"], expected=["a"])  # old right at 1, new at 5
    report.add(["c"], ["d"], expected=["d"])  # new right at 1
    report.add(["e"], ["e"])  # unlabelled
    assert report.tasks == 3 and report.labelled == 2
    assert report.accuracy("old", 1) == 0.5 and report.accuracy("new", 1) == 0.5
    assert report.accuracy("old", 5) == 0.5 and report.accuracy("new", 5) == 1.0
    assert report.overlap == pytest.approx((2 / 5 + 0 + 1 / 5) / 3)
    assert report.correlation_tasks == 1 and report.correlation == pytest.approx(-1.0)


def test_overlap_and_accuracy_use_the_top_k_of_deeper_lists() -> None:
    report = Comparison(k=2)
    old = ["a", "b", "c", "d", "e", "f"]
    new = ["b", "c", "a", "d", "e", "f"]
    report.add(old, new, expected=["e"])
    assert report.overlap == pytest.approx(0.5)  # {a, b} vs {b, c}
    assert report.accuracy("old", 5) == 1.0 and report.accuracy("new", 1) == 0.0
