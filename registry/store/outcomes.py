"""Outcomes: how a capability did on a task. One write per report (the outcome and its change-log row, in one
transaction), at most `max_per_capability` kept per capability (the oldest go), and the reads the outcome
index needs: by id (what the follower learns of) and a whole space (at start-up)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, Row, Select, delete, func, insert, select

from registry.domain.errors import NotFound
from registry.domain.models import Visibility
from registry.store import changelog
from registry.store import tables as t

DEFAULT_MAX_PER_CAPABILITY = 10_000


@dataclass(frozen=True, slots=True)
class NewOutcome:
    tenant: str
    capability_id: str
    space_id: int
    task_vector: npt.NDArray[np.float32]
    score: float
    task_text: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """What the outcome index holds of one outcome."""

    id: str
    tenant: str
    capability_id: str
    space_id: int
    task_vector: npt.NDArray[np.float32]
    score: float
    latency_ms: float | None = None


class OutcomeStore:
    def __init__(self, engine: Engine, max_per_capability: int = DEFAULT_MAX_PER_CAPABILITY):
        self.engine = engine
        self.max_per_capability = max_per_capability

    def last_seq(self) -> int:
        """The newest committed outcome change."""
        with self.engine.connect() as conn:
            return changelog.last_seq(conn, ["outcome"])

    def changes_after(self, after: int, limit: int = 1000) -> list[changelog.ChangeRow]:
        """Outcome changes committed after `after`, oldest first."""
        with self.engine.connect() as conn:
            return list(changelog.read_after(conn, after, limit, entity="outcome"))

    def record(self, outcome: NewOutcome) -> tuple[str, int]:
        """Store one outcome of a capability visible to its tenant; returns (outcome id, consistency token).
        NOT_FOUND, without writing, when the capability is gone or the tenant cannot see it."""
        now = datetime.now(UTC)
        outcome_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.agents.c.id, t.agents.c.tenant_id, t.agents.c.visibility, t.agents.c.shared_with)
                .select_from(t.capabilities.join(t.agents, t.capabilities.c.agent_id == t.agents.c.id))
                .where(t.capabilities.c.id == outcome.capability_id)
            ).first()
            if row is None or not _visible(row.tenant_id, row.visibility, row.shared_with, outcome.tenant):
                raise NotFound(f"capability {outcome.capability_id!r} does not exist or is not visible to this tenant")
            conn.execute(
                insert(t.outcomes).values(
                    id=outcome_id,
                    tenant_id=outcome.tenant,
                    capability_id=outcome.capability_id,
                    agent_id=row.id,
                    space_id=outcome.space_id,
                    task_vector=np.ascontiguousarray(outcome.task_vector, dtype="<f4").tobytes(),
                    task_text=outcome.task_text,
                    score=outcome.score,
                    latency_ms=outcome.latency_ms,
                    cost_usd=outcome.cost_usd,
                    input_tokens=outcome.input_tokens,
                    output_tokens=outcome.output_tokens,
                    created_at=now,
                )
            )
            # Keep the newest N of this capability: the ones past them go (id breaks ties in created_at).
            stale = [
                r[0]
                for r in conn.execute(
                    select(t.outcomes.c.id)
                    .where(t.outcomes.c.capability_id == outcome.capability_id)
                    .order_by(t.outcomes.c.created_at.desc(), t.outcomes.c.id.desc())
                    .offset(self.max_per_capability)
                )
            ]
            if stale:
                conn.execute(delete(t.outcomes).where(t.outcomes.c.id.in_(stale)))
            seq = changelog.append(conn, outcome.tenant, "outcome", outcome_id, "create", now)
        return outcome_id, seq

    def by_ids(self, ids: Collection[str]) -> list[OutcomeRow]:
        """The outcomes still stored among `ids` (those trimmed since are gone)."""
        found: list[OutcomeRow] = []
        wanted = list(ids)
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                found += _rows(conn.execute(_select().where(t.outcomes.c.id.in_(wanted[start : start + 500]))))
        return found

    def of_space(self, space_id: int) -> list[OutcomeRow]:
        """Every stored outcome of a space, oldest first (for start-up)."""
        with self.engine.connect() as conn:
            return _rows(
                conn.execute(
                    _select()
                    .where(t.outcomes.c.space_id == space_id)
                    .order_by(t.outcomes.c.created_at, t.outcomes.c.id)
                )
            )

    def count(self, capability_id: str) -> int:
        with self.engine.connect() as conn:
            stmt = select(func.count()).select_from(t.outcomes).where(t.outcomes.c.capability_id == capability_id)
            return int(conn.execute(stmt).scalar_one())


def _select() -> Select[Any]:
    return select(
        t.outcomes.c.id,
        t.outcomes.c.tenant_id,
        t.outcomes.c.capability_id,
        t.outcomes.c.space_id,
        t.outcomes.c.task_vector,
        t.outcomes.c.score,
        t.outcomes.c.latency_ms,
    )


def _rows(result: Iterable[Row[Any]]) -> list[OutcomeRow]:
    return [
        OutcomeRow(
            str(r.id),
            str(r.tenant_id),
            str(r.capability_id),
            int(r.space_id),
            np.frombuffer(r.task_vector, dtype="<f4").astype(np.float32),
            float(r.score),
            float(r.latency_ms) if r.latency_ms is not None else None,
        )
        for r in result
    ]


def _visible(owner: str, visibility: str, shared_with: object, tenant: str) -> bool:
    if owner == tenant or visibility == Visibility.PUBLIC.value:
        return True
    return visibility == Visibility.SHARED.value and isinstance(shared_with, list) and tenant in shared_with
