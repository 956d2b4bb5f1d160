"""Discover: embed the task (or take the caller's vector), mask by every constraint (visibility,
policy, status, filters, budget), search, rank, explain."""

from __future__ import annotations

import asyncio
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
from registry.service.outcomes import DiscoverMemory, OutcomeIndex
from registry.service.serving import ServingSpace, Spaces
from registry.service.shadow import ShadowRecorder

SIMILARITY_WEIGHT = 0.9
QUALITY_WEIGHT = 0.1
LEARNED_WEIGHT = 0.8  # the vote of the nearest past outcomes (registry/service/outcomes.py)
RERANK_EXTRA = 10  # rows fetched beyond k so the quality term can reorder the top


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
    ):
        self.spaces = spaces
        self.outcomes = outcomes
        self.memory = memory or DiscoverMemory()
        self._budgets = budgets
        self._policies = policies
        self._sync = sync
        self.shadow = ShadowRecorder(self)
        self._recent: deque[tuple[str, str]] = deque(maxlen=recent_texts)  # (tenant, text), for comparisons

    async def discover(self, query: DiscoverQuery) -> DiscoverResult:
        started = time.perf_counter()
        v.validate_discover(query)
        query = _with_tenant(query)
        timings: dict[str, float] = {}
        if query.min_seq > self.spaces.serving.index.watermark and self._sync is not None:
            t0 = time.perf_counter()
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
            vector = (await asyncio.to_thread(live.embedder.embed, [query.text]))[0]
            timings["embed"] = _ms(t0)
        budget_left = None
        if query.budget_id:
            if self._budgets is None:
                raise FailedPrecondition("this server keeps no budgets; leave budget_id empty")
            t0 = time.perf_counter()
            budget_left = await self._budgets.remaining_usd(query.caller, query.budget_id)
            timings["budget"] = _ms(t0)
        result = self.search(live, query, vector, budget_left, timings, started)
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
        index = live.index
        t0 = time.perf_counter()
        rules = policy_mask(index.columns, index.size, self._policies(query.tenant), query.caller, query.task_labels)
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
        timings["filter"] = _ms(t0)
        t0 = time.perf_counter()
        found = index.search(vector, query.top_k + RERANK_EXTRA, mask)
        timings["search"] = _ms(t0)
        t0 = time.perf_counter()
        candidates = dict(zip(found.rows.tolist(), found.similarities.tolist(), strict=True))
        votes = self.outcomes.votes(live.space.id, query.tenant, vector) if self.outcomes is not None else {}
        if votes:  # the capabilities past outcomes vote for (or against) are candidates too, if allowed
            unit = vector / max(float(np.linalg.norm(vector)), 1e-30)
            for cap_id in votes:
                row = index.row_of.get(cap_id)
                if row is not None and row not in candidates and mask[row]:
                    candidates[row] = float(index.vectors[row] @ unit)
            timings["outcomes"] = _ms(t0)
        matches = [self._match(index.entry(row), sim, query, votes) for row, sim in candidates.items()]
        if query.cost_preference > 0:
            matches = _with_cost(matches, query.cost_preference)
        matches.sort(key=lambda m: (-m.score, -m.similarity, m.capability.id))
        timings["rank"] = _ms(t0)
        timings["total"] = _ms(started)
        explanation = Explanation(
            candidates_total=index.live_count,
            candidates_allowed=int(np.count_nonzero(mask)),
            plan=found.plan,
            timings_ms=timings,
            exclusions=exclusions,
            hnsw_ef=found.ef,
            hnsw_rounds=found.rounds,
        )
        return DiscoverResult(
            matches=tuple(matches[: query.top_k]),
            explanation=explanation,
            vector_space=live.space.name,
            watermark=index.watermark,
        )

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
    def _match(entry: CatalogEntry, similarity: float, query: DiscoverQuery, votes: dict[str, float]) -> Match:
        cap = entry.capability
        score = SIMILARITY_WEIGHT * similarity + QUALITY_WEIGHT * cap.quality_prior
        terms: tuple[ScoreTerm, ...] = (
            ScoreTerm("similarity", similarity, SIMILARITY_WEIGHT),
            ScoreTerm("quality_prior", cap.quality_prior, QUALITY_WEIGHT),
        )
        if votes:  # without outcomes (cold start) the ranking is exactly the descriptions' one
            vote = votes.get(cap.id, 0.0)
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


def _with_cost(matches: list[Match], preference: float) -> list[Match]:
    """Blend each match's quality score with its cheapness: (1-a)*quality + a*(1 - cost/max cost among them)."""
    highest = max((m.estimated_cost_usd for m in matches), default=0.0)
    blended = []
    for m in matches:
        cheap = 1.0 - m.estimated_cost_usd / highest if highest > 0 else 1.0
        terms = tuple(replace(term, weight=term.weight * (1 - preference)) for term in m.score_terms)
        blended.append(
            replace(
                m,
                score=(1 - preference) * m.score + preference * cheap,
                score_terms=(*terms, ScoreTerm("cost", cheap, preference)),
            )
        )
    return blended


def _with_tenant(query: DiscoverQuery) -> DiscoverQuery:
    return replace(query, tenant=v.tenant_or_default(query.tenant, "tenant"))


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
