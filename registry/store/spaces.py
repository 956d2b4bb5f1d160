"""Vector spaces and their lifecycle: create, backfill bookkeeping, promote, roll back, retire.

Every transition is one transaction with a change_log row (entity "space"), so every server process's
follower switches (or loads, or drops) the space's index when it reads it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from registry.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from registry.domain.models import Agent, Capability, SpaceState, VectorSpace
from registry.store import changelog
from registry.store import tables as t
from registry.store.repository import now_utc
from registry.store.retries import retry_conflicts, retry_deadlocks
from registry.store.rows import agent_from_row, capability_from_row, space_from_row, utc


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many capabilities the space has a vector for, of all capabilities."""

    total: int
    embedded: int

    @property
    def complete(self) -> bool:
        return self.embedded >= self.total

    @property
    def missing(self) -> int:
        return max(self.total - self.embedded, 0)


@dataclass(frozen=True, slots=True)
class MissingVector:
    agent: Agent
    capability: Capability


class SpaceStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # -- reads ---------------------------------------------------------------------------------------

    def list_spaces(self, include_retired: bool = True) -> list[VectorSpace]:
        stmt = select(t.vector_spaces).order_by(t.vector_spaces.c.id)
        if not include_retired:
            stmt = stmt.where(t.vector_spaces.c.state != SpaceState.RETIRED.value)
        with self.engine.connect() as conn:
            return [space_from_row(r) for r in conn.execute(stmt).mappings()]

    def get(self, name: str) -> VectorSpace:
        with self.engine.connect() as conn:
            return space_from_row(self._find(conn, name))

    def coverage(self, space_id: int) -> Coverage:
        with self.engine.connect() as conn:
            return _coverage(conn, space_id)

    def missing(self, space_id: int, limit: int) -> list[MissingVector]:
        """Capabilities with no vector in the space yet, in id order: what a backfill embeds next. A
        backfill that stopped resumes here, never redoing a finished row."""
        vectors = t.capability_vectors
        stmt = (
            select(t.capabilities, t.agents)
            .join(t.agents, t.agents.c.id == t.capabilities.c.agent_id)
            .outerjoin(vectors, (vectors.c.capability_id == t.capabilities.c.id) & (vectors.c.space_id == space_id))
            .where(vectors.c.capability_id.is_(None))
            .order_by(t.capabilities.c.id)
            .limit(limit)
        )
        found = []
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                cap_row = {c.name: row._mapping[t.capabilities.c[c.name]] for c in t.capabilities.columns}
                agent_row = {c.name: row._mapping[t.agents.c[c.name]] for c in t.agents.columns}
                found.append(MissingVector(agent_from_row(agent_row, ()), capability_from_row(cap_row)))
        return found

    # -- writes --------------------------------------------------------------------------------------

    def create(self, space: VectorSpace) -> tuple[VectorSpace, int]:
        """A new space in state building (ready at once when there is nothing to embed)."""
        now = now_utc()
        try:
            with self.engine.begin() as conn:
                key = conn.execute(
                    insert(t.vector_spaces).values(
                        name=space.name,
                        model=space.model,
                        model_revision=space.model_revision,
                        weights_sha256=space.weights_sha256,
                        template=space.template,
                        dim=space.dim,
                        metric=space.metric,
                        state=SpaceState.BUILDING.value,
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key
                assert key is not None
                space_id = int(key[0])
                if _coverage(conn, space_id).complete:
                    self._set_state(conn, space_id, SpaceState.READY, now)
                seq = changelog.append(conn, "*", "space", space.name, "create", now)
                return space_from_row(self._find(conn, space.name)), seq
        except IntegrityError as exc:
            raise AlreadyExists(f"vector space {space.name!r} exists; pick another name or retire it first") from exc

    def put_vectors(self, space_id: int, rows: Sequence[tuple[MissingVector, str, bytes]]) -> tuple[int, int]:
        """See _put_vectors; (seq, vectors stored). A concurrent registration that stored one of these vectors
        first (a unique-key conflict) makes the batch run again, skipping that row."""
        return retry_conflicts(lambda: self._put_vectors(space_id, rows))

    @retry_deadlocks  # e.g. against a registration of the same capabilities, which may be the one chosen to go on
    def _put_vectors(self, space_id: int, rows: Sequence[tuple[MissingVector, str, bytes]]) -> tuple[int, int]:
        """Store backfilled vectors (capability, text hash, float32 bytes); one change per agent, so every
        follower adds them to its index of the space. Rows that gained a vector meanwhile (a concurrent
        registration embeds into every live space), lost their capability, or whose capability (or agent,
        if the template shows agent fields) changed since `missing()` read it are skipped: they stay
        missing, and the backfill's next batch embeds their current text."""
        now = now_utc()
        seq = stored = 0
        with self.engine.begin() as conn:
            space = self._find_by_id(conn, space_id, for_update=True)
            if space["state"] not in (SpaceState.BUILDING.value, SpaceState.READY.value):
                raise FailedPrecondition(f"vector space {space['name']!r} is {space['state']}; it takes no backfill")
            cap_ids = [m.capability.id for m, _, _ in rows]
            present = set(
                conn.execute(
                    select(t.capability_vectors.c.capability_id).where(
                        t.capability_vectors.c.space_id == space_id, t.capability_vectors.c.capability_id.in_(cap_ids)
                    )
                ).scalars()
            )
            # What each capability (and its agent, when the template names an agent field) looks like now:
            # one changed since missing() read it was embedded from old text, so it is skipped and stays
            # missing, and the next batch embeds its current text.
            current = {
                row.id: (row.cap_updated, row.agent_updated)
                for row in conn.execute(
                    select(
                        t.capabilities.c.id,
                        t.capabilities.c.updated_at.label("cap_updated"),
                        t.agents.c.updated_at.label("agent_updated"),
                    )
                    .join(t.agents, t.agents.c.id == t.capabilities.c.agent_id)
                    .where(t.capabilities.c.id.in_(cap_ids))
                    # FOR SHARE (PostgreSQL): a writer changing one of these rows waits for this commit, then
                    # sees the vector and drops or replaces it; one that changed first is seen changed here.
                    .with_for_update(read=True)
                )
            }
            uses_agent = "{agent_" in space["template"]
            agents: dict[str, str] = {}
            for missing, text_hash, vector in rows:
                cap_id = missing.capability.id
                if cap_id in present or cap_id not in current:
                    continue
                cap_updated, agent_updated = (utc(v) for v in current[cap_id])
                if cap_updated != missing.capability.updated_at or (
                    uses_agent and agent_updated != missing.agent.updated_at
                ):
                    continue
                conn.execute(
                    insert(t.capability_vectors).values(
                        capability_id=cap_id, space_id=space_id, text_sha256=text_hash, vector=vector, created_at=now
                    )
                )
                stored += 1
                agents[missing.agent.id] = missing.agent.tenant
            for agent_id, tenant in sorted(agents.items()):
                seq = changelog.append(conn, tenant, "agent", agent_id, "vectors", now)
        return seq, stored

    def mark_ready_if_complete(self, space_id: int) -> tuple[bool, int]:
        """building -> ready once every capability has a vector here; (became ready, seq)."""
        now = now_utc()
        with self.engine.begin() as conn:
            space = self._find_by_id(conn, space_id, for_update=True)
            if space["state"] != SpaceState.BUILDING.value or not _coverage(conn, space_id).complete:
                return False, 0
            self._set_state(conn, space_id, SpaceState.READY, now)
            return True, changelog.append(conn, "*", "space", space["name"], "ready", now)

    def fail(self, space_id: int, error: str) -> int:
        now = now_utc()
        with self.engine.begin() as conn:
            space = self._find_by_id(conn, space_id, for_update=True)
            if space["state"] != SpaceState.BUILDING.value:
                return 0
            self._set_state(conn, space_id, SpaceState.FAILED, now, error=error[:2000])
            return changelog.append(conn, "*", "space", space["name"], "fail", now)

    def promote(self, name: str) -> tuple[VectorSpace, int]:
        """Make `name` the serving space, atomically; the one it replaces becomes ready, for rollback."""
        now = now_utc()
        with self.engine.begin() as conn:
            rows = self._lock_all(conn)
            target = _named(rows, name)
            current = next((r for r in rows if r["state"] == SpaceState.SERVING.value), None)
            if target["state"] == SpaceState.SERVING.value:
                raise FailedPrecondition(f"vector space {name!r} is already serving")
            if target["state"] != SpaceState.READY.value:
                hint = "; run `capreg vectors backfill` first" if target["state"] == SpaceState.BUILDING.value else ""
                raise FailedPrecondition(f"vector space {name!r} is {target['state']}, not ready{hint}")
            coverage = _coverage(conn, target["id"])
            if not coverage.complete:
                raise FailedPrecondition(
                    f"vector space {name!r} lacks vectors for {coverage.missing} of {coverage.total} capabilities; "
                    "run `capreg vectors backfill` to finish it"
                )
            if current is not None:
                self._set_state(conn, current["id"], SpaceState.READY, now)
            self._set_state(
                conn, target["id"], SpaceState.SERVING, now, previous=current["id"] if current is not None else None
            )
            seq = changelog.append(conn, "*", "space", name, "promote", now)
            return space_from_row(self._find(conn, name)), seq

    def rollback(self) -> tuple[VectorSpace, int]:
        """Serve again the space that served before the current one (while it is not retired)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.vector_spaces)).mappings().all()
        current = next((r for r in rows if r["state"] == SpaceState.SERVING.value), None)
        if current is None or current["previous_serving_id"] is None:
            raise FailedPrecondition("no earlier serving space to roll back to")
        previous = next((r for r in rows if r["id"] == current["previous_serving_id"]), None)
        if previous is None or previous["state"] != SpaceState.READY.value:
            state = previous["state"] if previous is not None else "gone"
            raise FailedPrecondition(f"the previous serving space is {state}; a rollback needs it ready")
        return self.promote(previous["name"])

    def retire(self, name: str) -> tuple[VectorSpace, int]:
        """Drop a space that does not serve: its vectors are deleted and every process frees its index."""
        now = now_utc()
        with self.engine.begin() as conn:
            target = _named(self._lock_all(conn), name)
            if target["state"] == SpaceState.SERVING.value:
                raise FailedPrecondition(f"vector space {name!r} is serving; promote another space first")
            if target["state"] == SpaceState.RETIRED.value:
                raise FailedPrecondition(f"vector space {name!r} is already retired")
            conn.execute(delete(t.capability_vectors).where(t.capability_vectors.c.space_id == target["id"]))
            self._set_state(conn, target["id"], SpaceState.RETIRED, now)
            seq = changelog.append(conn, "*", "space", name, "retire", now)
            return space_from_row(self._find(conn, name)), seq

    def set_shadow(self, name: str, fraction: float) -> tuple[VectorSpace, int]:
        now = now_utc()
        with self.engine.begin() as conn:
            target = _named(self._lock_all(conn), name)
            if target["state"] not in (SpaceState.BUILDING.value, SpaceState.READY.value):
                raise FailedPrecondition(f"vector space {name!r} is {target['state']}; only a candidate is shadowed")
            conn.execute(
                update(t.vector_spaces)
                .where(t.vector_spaces.c.id == target["id"])
                .values(shadow_fraction=fraction, updated_at=now)
            )
            seq = changelog.append(conn, "*", "space", name, "shadow", now)
            return space_from_row(self._find(conn, name)), seq

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _set_state(
        conn: Connection,
        space_id: int,
        state: SpaceState,
        now: datetime,
        *,
        previous: int | None = None,
        error: str = "",
    ) -> None:
        values: dict[str, Any] = {"state": state.value, "updated_at": now, f"{state.value}_at": now}
        if state is SpaceState.SERVING:
            values["previous_serving_id"] = previous
            values["shadow_fraction"] = 0.0
        if state is SpaceState.FAILED:
            values["error"] = error
        conn.execute(update(t.vector_spaces).where(t.vector_spaces.c.id == space_id).values(**values))

    @staticmethod
    def _lock_all(conn: Connection) -> list[Any]:
        """Every space row, locked: transitions that look at two spaces never interleave."""
        return list(conn.execute(select(t.vector_spaces).order_by(t.vector_spaces.c.id).with_for_update()).mappings())

    @staticmethod
    def _find(conn: Connection, name: str) -> Any:
        row = conn.execute(select(t.vector_spaces).where(t.vector_spaces.c.name == name)).mappings().first()
        if row is None:
            raise NotFound(f"vector space {name!r} does not exist; `capreg vectors list` shows them")
        return row

    @staticmethod
    def _find_by_id(conn: Connection, space_id: int, *, for_update: bool = False) -> Any:
        stmt = select(t.vector_spaces).where(t.vector_spaces.c.id == space_id)
        row = conn.execute(stmt.with_for_update() if for_update else stmt).mappings().first()
        if row is None:
            raise NotFound(f"vector space {space_id} does not exist")
        return row


def _named(rows: list[Any], name: str) -> Any:
    for row in rows:
        if row["name"] == name:
            return row
    raise NotFound(f"vector space {name!r} does not exist; `capreg vectors list` shows them")


def _coverage(conn: Connection, space_id: int) -> Coverage:
    total = int(conn.execute(select(func.count()).select_from(t.capabilities)).scalar_one())
    embedded = int(
        conn.execute(
            select(func.count()).select_from(t.capability_vectors).where(t.capability_vectors.c.space_id == space_id)
        ).scalar_one()
    )
    return Coverage(total, embedded)
