"""Discover: embed the task (or take the caller's vector), mask by every constraint (visibility,
policy, status, filters, budget), search, rank, explain."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from registry.domain import validation as v
from registry.domain.errors import FailedPrecondition
from registry.domain.models import (
    CatalogEntry,
    DiscoverQuery,
    DiscoverResult,
    Explanation,
    Match,
    ScoreTerm,
)
from registry.domain.policy import TenantPolicies
from registry.domain.ports import BudgetLimiter
from registry.index.columns import constraint_mask
from registry.index.policy_mask import policy_mask
from registry.service.outcomes import NO_VOTES, DiscoverMemory, OutcomeIndex, Votes
from registry.service.serving import ServingSpace, Spaces
from registry.service.shadow import ShadowRecorder
from registry.telemetry import annotate_call, current

SIMILARITY_WEIGHT = 0.9
QUALITY_WEIGHT = 0.1
LEARNED_WEIGHT = 0.8  # the vote of the nearest past outcomes (registry/service/outcomes.py)
RERANK_EXTRA = 10  # rows fetched beyond k so the quality term can reorder the top
EXPLORE_BELOW = 20  # exploration tries capabilities with fewer reported outcomes than this


def no_policies(_tenant: str) -> TenantPolicies:
    return TenantPolicies()


class DiscoveryService:
    def __init__(
        self,
        spaces: Spaces,
        budgets: BudgetLimiter | None = None,
        policies: Callable[[str], TenantPolicies] = no_policies,
        sync: Callable[[int], Awaitable[None]] | None = None,
        recent_texts: int = 1000,
        outcomes: OutcomeIndex | None = None,
        memory: DiscoverMemory | None = None,
        rng: random.Random | None = None,
    ):
        self.spaces = spaces
        self.outcomes = outcomes
        self.memory = memory or DiscoverMemory()
        self._budgets = budgets
        self._policies = policies
        self._sync = sync
        self._random = rng or random.Random()  # exploration's coin; tests pass a seeded one
        self.shadow = ShadowRecorder(self)
        self._recent: deque[tuple[str, str]] = deque(maxlen=recent_texts)  # (tenant, text), for comparisons

    async def discover(self, query: DiscoverQuery, *, record: bool = True) -> DiscoverResult:
        """`record`: remember the task for ReportOutcome's discover_id, keep the text for comparisons and shadow
        traffic (a watch's re-evaluations do none of it)."""
        started = time.perf_counter()
        v.validate_discover(query)
        query = _with_tenant(query)
        timings: dict[str, float] = {}
        telemetry = current()
        if query.min_seq > self.spaces.serving.index.watermark and self._sync is not None:
            t0 = time.perf_counter()
            with telemetry.span("wait_min_seq", min_seq=query.min_seq):
                await self._sync(query.min_seq)
            timings["wait_min_seq"] = _ms(t0)
        # One space answers the whole request, even if another is promoted meanwhile.
        live = self.spaces.get(query.vector_space) if query.vector_space else self.spaces.serving
        space = live.space
        if query.vector is not None:
            vector = np.asarray(query.vector, dtype=np.float32)
            v.validate_vector(vector, space.dim, "vector.values")
        else:
            assert query.text is not None
            t0 = time.perf_counter()
            with telemetry.span("embed", **{"capreg.space": space.name}):
                vector = await live.batcher.embed(query.text)
            timings["embed"] = _ms(t0)
        budget_left = None
        if query.budget_id:
            if self._budgets is None:
                raise FailedPrecondition("this server keeps no budgets; leave budget_id empty")
            t0 = time.perf_counter()
            with telemetry.span("database", **{"db.operation": "budget remaining"}):
                budget_left = await self._budgets.remaining_usd(query.caller, query.budget_id)
            timings["budget"] = _ms(t0)
        result = self.search(live, query, vector, budget_left, timings, started)
        if not record:  # a watch's re-evaluation: it must not push real Discovers' ids out of the memory
            return result
        result = replace(result, discover_id=self.memory.remember(query.tenant, space.name, vector, query.text))
        if query.text is not None and not query.vector_space:
            self._recent.append((query.tenant, query.text))
            self.shadow.maybe_compare(query, result, budget_left)
        return result

    def search(
        self,
        live: ServingSpace,
        query: DiscoverQuery,
        vector: npt.NDArray[np.float32],
        budget_left: float | None,
        timings: dict[str, float],
        started: float,
    ) -> DiscoverResult:
        """Synchronous on the event loop: the index never changes under a search."""
        telemetry = current()
        index = live.index
        t0 = time.perf_counter()
        with telemetry.span("constraint_mask") as span:
            rules = policy_mask(
                index.columns, index.size, self._policies(query.tenant), query.caller, query.task_labels
            )
            mask, exclusions = constraint_mask(
                index.columns,
                index.size,
                query.tenant,
                query.filters,
                query.estimated_input_tokens,
                query.estimated_output_tokens,
                budget_left,
                rules,
            )
            allowed = int(np.count_nonzero(mask))
            span.set_attribute("capreg.candidates", allowed)
        timings["filter"] = _ms(t0)
        t0 = time.perf_counter()
        with telemetry.span("plan") as plan_span, telemetry.span("index_search") as search_span:
            found = index.search(vector, query.top_k + RERANK_EXTRA, mask)
            plan_span.set_attribute("capreg.plan", found.plan)
            search_span.set_attributes({"capreg.found": len(found.rows), "capreg.hnsw_ef": found.ef})
        timings["search"] = _ms(t0)
        telemetry.discover_plans.add(1, {"plan": found.plan, "space": live.space.name})
        t0 = time.perf_counter()
        with telemetry.span("rank"):
            answer = self._rank(live, query, vector, mask, found.rows, found.similarities, timings, t0)
        timings["rank"] = _ms(t0)
        timings["total"] = _ms(started)
        annotate_call(
            **{
                "capreg.tenant": query.tenant,
                "capreg.top_k": query.top_k,
                "capreg.candidates": allowed,
                "capreg.plan": found.plan,
                "capreg.space": live.space.name,
                "capreg.matches": len(answer),
            }
        )
        explanation = Explanation(
            candidates_total=index.live_count,
            candidates_allowed=allowed,
            plan=found.plan,
            timings_ms=timings,
            exclusions=exclusions,
            hnsw_ef=found.ef,
            hnsw_rounds=found.rounds,
        )
        return DiscoverResult(
            matches=tuple(answer),
            explanation=explanation,
            vector_space=live.space.name,
            watermark=index.watermark,
        )

    def _rank(
        self,
        live: ServingSpace,
        query: DiscoverQuery,
        vector: npt.NDArray[np.float32],
        mask: npt.NDArray[np.bool_],
        rows: npt.NDArray[np.int64],
        similarities: npt.NDArray[np.float32],
        timings: dict[str, float],
        t0: float,
    ) -> list[Match]:
        """The candidates (the search's and those past outcomes point to), scored, blended, ordered."""
        index = live.index
        found_rows, found_similarities = rows, similarities
        candidates = dict(zip(found_rows.tolist(), found_similarities.tolist(), strict=True))
        votes = self.outcomes.votes(live.space.id, query.tenant, vector) if self.outcomes is not None else NO_VOTES
        if votes:  # the capabilities with outcomes near this task are candidates too, if allowed
            unit = vector / max(float(np.linalg.norm(vector)), 1e-30)
            for cap_id in votes.neighbours:
                row = index.row_of.get(cap_id)
                if row is not None and row not in candidates and mask[row]:
                    candidates[row] = float(index.vectors[row] @ unit)
            timings["outcomes"] = _ms(t0)
        matches = [self._match(index.entry(row), sim, query, votes) for row, sim in candidates.items()]
        if query.cost_preference > 0 or query.latency_preference > 0:
            matches = blend_cost_and_latency(matches, query.cost_preference, query.latency_preference, votes)
        matches.sort(key=lambda m: (-m.score, -m.similarity, m.capability.id))
        answer = matches[: query.top_k]
        if query.exploration_rate > 0 and self._random.random() < query.exploration_rate:
            answer = explore(answer, votes)
        return answer

    def next_lease_expiry(self, result: DiscoverResult) -> float | None:
        """The earliest lease expiry (epoch seconds) among the answer's matches; None when none expires."""
        if result.vector_space not in self.spaces:
            return None
        index = self.spaces.get(result.vector_space).index
        rows = [index.row_of[m.capability.id] for m in result.matches if m.capability.id in index.row_of]
        if not rows:
            return None
        earliest = float(index.columns.lease_expires[rows].min())
        return earliest if np.isfinite(earliest) else None

    def recent_texts(self, tenant: str, limit: int) -> list[str]:
        """Up to `limit` distinct texts this server was recently asked to Discover for `tenant`, newest first
        (kept in memory only, `recent_texts` of them across tenants)."""
        found: dict[str, None] = {}
        for asked_by, text in reversed(self._recent):
            if len(found) >= limit:
                break
            if asked_by == tenant:
                found.setdefault(text)
        return list(found)

    @staticmethod
    def _match(entry: CatalogEntry, similarity: float, query: DiscoverQuery, votes: Votes) -> Match:
        cap = entry.capability
        score = SIMILARITY_WEIGHT * similarity + QUALITY_WEIGHT * cap.quality_prior
        terms: tuple[ScoreTerm, ...] = (
            ScoreTerm("similarity", similarity, SIMILARITY_WEIGHT),
            ScoreTerm("quality_prior", cap.quality_prior, QUALITY_WEIGHT),
        )
        if votes:  # without outcomes (cold start) the ranking is exactly the descriptions' one
            vote = votes.of(cap.id)
            score += LEARNED_WEIGHT * vote
            terms += (ScoreTerm("learned_quality", vote, LEARNED_WEIGHT),)
        return Match(
            agent_id=entry.agent_id,
            agent_name=entry.agent_name,
            tenant=entry.tenant,
            kind=entry.kind,
            endpoint=entry.endpoint,
            labels=entry.labels,
            capability=cap,
            similarity=similarity,
            score=score,
            estimated_cost_usd=cap.cost.estimate(query.estimated_input_tokens, query.estimated_output_tokens),
            score_terms=terms,
        )


def blend_cost_and_latency(matches: list[Match], cost: float, latency: float, votes: Votes) -> list[Match]:
    """(1-a-b)*score + a*cheapness + b*speed, each of the last two normalized among these candidates:
    cheapness = 1 - cost / the highest cost, speed = 1 - latency / the highest latency (the mean latency
    the tenant reported, else the declared p50; unknown: 0.5)."""
    highest_cost = max((m.estimated_cost_usd for m in matches), default=0.0)
    latencies = {m.capability.id: _latency_ms(m, votes) for m in matches}
    highest_latency = max((ms for ms in latencies.values() if ms is not None), default=0.0)
    keep = 1.0 - cost - latency
    blended = []
    for m in matches:
        cheap = 1.0 - m.estimated_cost_usd / highest_cost if highest_cost > 0 else 1.0
        ms = latencies[m.capability.id]
        fast = 0.5 if ms is None else (1.0 - ms / highest_latency if highest_latency > 0 else 1.0)
        terms = tuple(replace(term, weight=term.weight * keep) for term in m.score_terms)
        extra: tuple[ScoreTerm, ...] = (ScoreTerm("cost", cheap, cost),) if cost > 0 else ()
        extra += (ScoreTerm("latency", fast, latency),) if latency > 0 else ()
        score = keep * m.score + cost * cheap + latency * fast
        blended.append(replace(m, score=score, score_terms=(*terms, *extra)))
    return blended


def _latency_ms(match: Match, votes: Votes) -> float | None:
    observed = votes.mean_latency_ms(match.capability.id)
    if observed is not None:
        return observed
    declared = match.capability.latency_p50_ms
    return float(declared) if declared > 0 else None


def explore(answer: list[Match], votes: Votes) -> list[Match]:
    """Put first the answer's least-tried capability (fewest outcomes, under EXPLORE_BELOW; the better
    score among equals), marked with an "exploration" term; the answer unchanged when none qualifies."""
    tried = [(votes.count(m.capability.id), index) for index, m in enumerate(answer)]
    eligible = [(count, index) for count, index in tried if count < EXPLORE_BELOW]
    if not eligible:
        return answer
    _, chosen = min(eligible)
    if chosen == 0:
        return answer
    picked = answer[chosen]
    picked = replace(picked, score_terms=(*picked.score_terms, ScoreTerm("exploration", 1.0, 0.0)))
    return [picked, *answer[:chosen], *answer[chosen + 1 :]]


def _with_tenant(query: DiscoverQuery) -> DiscoverQuery:
    return replace(query, tenant=v.tenant_or_default(query.tenant, "tenant"))


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
