"""The arithmetic of learned quality (registry/service/outcomes.py), without a server: local evidence
shrunk toward each capability's overall rate, bounded per capability, and exploration's choice."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.domain.models import AgentKind, Capability, Match
from registry.service.discovery_service import EXPLORE_BELOW, explore
from registry.service.outcomes import PRIOR_WEIGHT, TenantOutcomes, Votes

DIM = 4


def unit(*values: float) -> npt.NDArray[np.float32]:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return (vector / np.linalg.norm(vector)).astype(np.float32)


HERE, FAR = unit(1.0), unit(0.0, 1.0)


def test_no_outcomes_no_vote() -> None:
    outcomes = TenantOutcomes(DIM, 10)
    votes = outcomes.votes(HERE, 10)
    assert not votes
    assert votes.of("anything") == 0.0


def test_only_capabilities_with_outcomes_near_the_task_vote() -> None:
    outcomes = TenantOutcomes(DIM, 10)
    for i in range(3):
        outcomes.add(f"far-{i}", "far-cap", 1.0, FAR)
    outcomes.add("near", "near-cap", 1.0, HERE)
    votes = outcomes.votes(HERE, k=1)  # the neighbourhood holds only "near"
    assert votes.of("far-cap") == 0.0  # known, but not for this kind of task
    # near-cap: all the evidence (weight 1, success), and its overall rate 2/3 at weight PRIOR_WEIGHT
    expected = (1.0 + PRIOR_WEIGHT * (2 * 2 / 3 - 1)) / (1.0 + PRIOR_WEIGHT)
    assert votes.of("near-cap") == pytest.approx(expected)
    assert votes.of("never-reported") == 0.0


def test_a_capability_votes_its_share_of_the_neighbourhood() -> None:
    """Tools: the one that most nearby tasks went well with wins over one that did well on a single task."""
    outcomes = TenantOutcomes(DIM, 100)
    for i in range(3):
        outcomes.add(f"m-{i}", "most", 1.0, HERE)
    outcomes.add("o", "once", 1.0, HERE)
    votes = outcomes.votes(HERE, k=4)
    assert votes.of("most") > votes.of("once") > 0.0


def test_split_evidence_goes_to_the_stronger_capability_overall() -> None:
    """Models: each did well on the same nearby task; the strong one does well elsewhere too, the cheap
    one fails there."""
    outcomes = TenantOutcomes(DIM, 100)
    outcomes.add("s-near", "strong", 1.0, HERE)
    outcomes.add("c-near", "cheap", 1.0, HERE)
    for i in range(8):
        outcomes.add(f"s-{i}", "strong", 1.0, FAR)
        outcomes.add(f"c-{i}", "cheap", 0.0, FAR)
    votes = outcomes.votes(HERE, k=2)
    assert votes.neighbours == {"strong", "cheap"}
    assert votes.of("strong") > votes.of("cheap")


def test_loosely_related_evidence_counts_less_against_the_overall_rate() -> None:
    """The same single failure weighs less when the task it was reported for is less similar."""
    loose = unit(1.0, 3.0)  # cosine 0.32 with HERE
    for reported_on, damped in ((HERE, False), (loose, True)):
        outcomes = TenantOutcomes(DIM, 100)
        outcomes.add("f", "cap", 0.0, reported_on)
        for i in range(20):
            outcomes.add(f"s-{i}", "cap", 1.0, FAR)
        vote = outcomes.votes(HERE, k=1).of("cap")
        assert (vote > 0) is damped, vote


def test_the_newest_outcomes_per_capability_are_kept_and_counted() -> None:
    outcomes = TenantOutcomes(DIM, 2)
    outcomes.add("a", "cap", 0.0, HERE, latency_ms=100.0)
    outcomes.add("b", "cap", 1.0, HERE, latency_ms=None)
    outcomes.add("c", "cap", 1.0, HERE, latency_ms=300.0)  # "a" leaves
    assert len(outcomes) == 2
    record = outcomes.records["cap"]
    assert (record.count, record.score_sum, record.mean_latency_ms) == (2, 2.0, 300.0)
    outcomes.forget("cap")
    assert len(outcomes) == 0 and not outcomes.votes(HERE, 5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.floats(0.0, 1.0),
            st.lists(st.floats(-1.0, 1.0), min_size=DIM, max_size=DIM),
            st.one_of(st.none(), st.floats(0.0, 1e5)),
        ),
        max_size=40,
    ),
    st.integers(1, 5),
    st.integers(1, 12),
)
def test_votes_are_bounded_and_records_match_what_is_kept(
    reported: list[tuple[str, float, list[float], float | None]], limit: int, k: int
) -> None:
    outcomes = TenantOutcomes(DIM, limit)
    kept: dict[str, list[tuple[float, float | None]]] = {}  # the model: each capability's newest `limit`
    for number, (cap, score, values, latency) in enumerate(reported):
        vector = np.array(values, dtype=np.float32)
        if not np.linalg.norm(vector) > 0:
            continue
        outcomes.add(str(number), cap, score, vector, latency)
        kept[cap] = ([*kept.get(cap, []), (score, latency)])[-limit:]
    assert len(outcomes) == sum(len(v) for v in kept.values())
    for cap, items in kept.items():
        record = outcomes.records[cap]
        assert record.count == len(items)
        assert record.score_sum == pytest.approx(sum(score for score, _ in items), abs=1e-9)
        latencies = [ms for _, ms in items if ms is not None]
        assert record.latency_count == len(latencies)
    votes = outcomes.votes(unit(1.0, 0.5), k)
    for cap in ("a", "b", "c", "z"):
        assert -1.0 <= votes.of(cap) <= 1.0


def match(name: str) -> Match:
    cap = Capability(id=name, name=name, version="1.0.0", description=name)
    return Match(name, name, "t", AgentKind.TOOL, "", {}, cap, 0.5, 0.5, 0.0, ())


def votes_with_counts(counts: dict[str, int]) -> Votes:
    outcomes = TenantOutcomes(DIM, 1000)
    for cap, count in counts.items():
        for i in range(count):
            outcomes.add(f"{cap}-{i}", cap, 1.0, HERE)
    return outcomes.votes(HERE, 10)


def test_exploration_promotes_the_least_tried_and_leaves_the_rest_in_order() -> None:
    answer = [match("a"), match("b"), match("c"), match("d")]
    explored = explore(answer, votes_with_counts({"a": 5, "b": 1, "c": 3, "d": 1}))
    assert [m.capability.id for m in explored] == ["b", "a", "c", "d"]  # b and d tie: the better-ranked one
    assert [t.name for t in explored[0].score_terms] == ["exploration"]


def test_exploration_leaves_an_answer_whose_capabilities_were_all_tried_enough() -> None:
    answer = [match("a"), match("b")]
    enough = votes_with_counts({"a": EXPLORE_BELOW + 3, "b": EXPLORE_BELOW})
    assert explore(answer, enough) == answer
