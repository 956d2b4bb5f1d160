"""The registry's repository: every read and write of agents, capabilities, vectors and the change log.

Methods are synchronous and run in worker threads; each write is one transaction that also appends to
change_log, and returns the CatalogChange the in-memory index must apply.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, delete, insert, select, update

from registry.domain.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from registry.domain.models import (
    Agent,
    AgentDocument,
    AgentRef,
    AgentStatus,
    CatalogChange,
    CatalogEntry,
    ListAgentsQuery,
    SpaceState,
    VectorSpace,
    Visibility,
    WriteResult,
)
from registry.domain.validation import NAME_RE
from registry.index.space_index import catalog_digest
from registry.store import changelog
from registry.store import tables as t
from registry.store.retries import retry_conflicts, retry_deadlocks
from registry.store.rows import agent_from_row, capability_from_row, capability_values, space_from_row, utc

# Built once: a statement with its values given as execute() parameters compiles once and is cached, where
# insert(...).values(...) per row costs a cache-key walk of every value (a third of a bulk registration).
_INSERT_AGENT = insert(t.agents)
_INSERT_CAPABILITY = insert(t.capabilities)
_INSERT_VECTOR = insert(t.capability_vectors)


def now_utc() -> datetime:
    return datetime.now(UTC)


def vector_to_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


class RegistryStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # -- vector spaces -------------------------------------------------------------------------------

    def ensure_space(self, space: VectorSpace) -> VectorSpace:
        """Create the space, or check that the stored one was made the same way."""
        with self._begin() as conn:
            row = conn.execute(select(t.vector_spaces).where(t.vector_spaces.c.name == space.name)).mappings().first()
            if row is None:
                now = now_utc()
                space_id = conn.execute(
                    insert(t.vector_spaces).values(
                        name=space.name,
                        model=space.model,
                        model_revision=space.model_revision,
                        weights_sha256=space.weights_sha256,
                        template=space.template,
                        dim=space.dim,
                        metric=space.metric,
                        state=space.state,
                        created_at=now,
                        updated_at=now,
                        ready_at=now if space.state == "serving" else None,
                        serving_at=now if space.state == "serving" else None,
                    )
                ).inserted_primary_key
                assert space_id is not None
                return replace(space, id=int(space_id[0]))
            stored = space_from_row(row)
            for attr in ("model", "weights_sha256", "template", "dim", "metric"):
                if getattr(stored, attr) != getattr(space, attr):
                    raise Conflict(
                        f"vector space {space.name!r} was built with {attr}={getattr(stored, attr)!r}, "
                        f"but the server is configured with {getattr(space, attr)!r}; configure the same "
                        "model and template, or roll out a new vector space"
                    )
            return stored

    def vectors_by_text(self, space_id: int, text_hashes: Collection[str]) -> dict[str, bytes]:
        """Stored vectors for any of these embedded texts, so unchanged text is never embedded twice."""
        if not text_hashes:
            return {}
        with self._connect() as conn:
            rows = conn.execute(
                select(t.capability_vectors.c.text_sha256, t.capability_vectors.c.vector).where(
                    t.capability_vectors.c.space_id == space_id,
                    t.capability_vectors.c.text_sha256.in_(list(text_hashes)),
                )
            )
            return {text_hash: vector for text_hash, vector in rows}

    def catalog(self, space_id: int, batch_size: int = 2000) -> Iterator[CatalogEntry]:
        """Every capability with its vector in the space: what the index is built from at start-up."""
        query = (
            select(t.capabilities, t.agents, t.capability_vectors.c.text_sha256, t.capability_vectors.c.vector)
            .join(t.agents, t.agents.c.id == t.capabilities.c.agent_id)
            .join(t.capability_vectors, t.capability_vectors.c.capability_id == t.capabilities.c.id)
            .where(t.capability_vectors.c.space_id == space_id)
        )
        with self._connect() as conn:
            result = conn.execution_options(yield_per=batch_size).execute(query)
            for row in result:
                cap_row = {c.name: row._mapping[t.capabilities.c[c.name]] for c in t.capabilities.columns}
                agent_row = {c.name: row._mapping[t.agents.c[c.name]] for c in t.agents.columns}
                agent = agent_from_row(agent_row, ())
                yield _entry(agent, capability_from_row(cap_row), vector_from_bytes(row.vector), row.text_sha256)

    def index_digest(self, space_id: int) -> str:
        """What `SpaceIndex.digest` of an index fully caught up with the database must be."""
        query = (
            select(
                t.capabilities.c.id,
                t.capability_vectors.c.text_sha256,
                t.agents.c.status,
                t.capabilities.c.updated_at,
            )
            .join(t.agents, t.agents.c.id == t.capabilities.c.agent_id)
            .join(t.capability_vectors, t.capability_vectors.c.capability_id == t.capabilities.c.id)
            .where(t.capability_vectors.c.space_id == space_id)
        )
        with self._connect() as conn:
            return catalog_digest(
                (cap_id, h, status, utc(updated)) for cap_id, h, status, updated in conn.execute(query)
            )

    def watermark(self, entities: Sequence[str] = ()) -> int:
        """The newest committed change (of these entities, when given)."""
        with self._connect() as conn:
            return changelog.last_seq(conn, entities)

    def changes_after(self, after: int, limit: int, entity: str = "") -> list[changelog.ChangeRow]:
        """Committed changes after `after` (of one entity, when given), oldest first: what followers read."""
        with self._connect() as conn:
            return list(changelog.read_after(conn, after, limit, entity))

    # -- agents: writes ------------------------------------------------------------------------------

    def register(
        self,
        agent: Agent,
        expected_generation: int,
        space_id: int,
        text_hashes: Sequence[str],
        vectors: dict[str, bytes],
        *,
        more: Sequence[SpaceVectors] = (),
        document: AgentDocument | None = None,
    ) -> WriteResult:
        """Idempotent upsert of an agent with exactly these capabilities (and the document it was imported
        from, kept for export; None leaves a stored one as it is).

        text_hashes[i] is the hash of capability i's embedded text in the serving space `space_id`;
        vectors maps each hash to its vector. `more` carries the same for every other live space (being
        built, or ready for rollback), so nothing registered meanwhile is missing from it.
        """
        primary = SpaceVectors(space_id, text_hashes, vectors)
        return self.register_many([Registration(agent, expected_generation, primary, more, document)], bulk=False)[0]

    def register_many(self, registrations: Sequence[Registration], *, bulk: bool = True) -> list[WriteResult]:
        """Register every agent in one transaction: all or none. Rows are locked in (tenant, name) order,
        so two concurrent batches cannot deadlock on agents, and the change-log rows are appended last in
        one insert, so the log's lock is held only for that and the commit. Answers in the given order.
        `bulk`: errors name the agent as `agents[i]` (RegisterAgents), else as the request's one agent."""
        order = sorted(
            range(len(registrations)), key=lambda i: (registrations[i].agent.tenant, registrations[i].agent.name)
        )
        names = ", ".join(f"{r.agent.tenant}/{r.agent.name}" for r in registrations[:3])
        more = f" (and {len(registrations) - 3} more)" if len(registrations) > 3 else ""
        return retry_conflicts(  # a concurrent first registration of the same tenant or name
            lambda: self._register_all(registrations, order, bulk),
            lambda _: Conflict(f"agent {names}{more} is being registered concurrently; retry"),
        )

    @retry_deadlocks  # e.g. against a backfill inserting vectors of the same capabilities
    def _register_all(
        self, registrations: Sequence[Registration], order: Sequence[int], bulk: bool
    ) -> list[WriteResult]:
        now = now_utc()
        with self._begin() as conn:
            for tenant in sorted({r.agent.tenant for r in registrations}):
                self._ensure_tenant(conn, tenant, now)
            pending: dict[int, _Pending] = {}
            for i in order:
                try:
                    pending[i] = self._register_in(conn, registrations[i], now)
                except (Conflict, NotFound) as exc:
                    if bulk:
                        raise type(exc)(f"agents[{i}]: {exc.message}") from exc
                    raise
            stored = self._load_agents(conn, [step.agent_id for step in pending.values()])
            logged = [i for i in order if pending[i].op]
            changes = [(pending[i].tenant, "agent", pending[i].agent_id, pending[i].op) for i in logged]
            seqs = dict(zip(logged, changelog.append_many(conn, changes, now), strict=True))
            observed = max(seqs.values()) if seqs else changelog.last_seq(conn)
            results = {i: step.finish(seqs.get(i, observed), stored[step.agent_id]) for i, step in pending.items()}
        return [results[i] for i in range(len(registrations))]

    def _register_in(self, conn: Connection, registration: Registration, now: datetime) -> _Pending:
        """One agent's upsert inside the caller's transaction; the change-log row is left to the caller."""
        agent, expected_generation, primary, more, document = registration
        space_id, text_hashes, vectors = primary
        row = (
            conn.execute(
                select(t.agents)
                .where(t.agents.c.tenant_id == agent.tenant, t.agents.c.name == agent.name)
                .with_for_update()
            )
            .mappings()
            .first()
        )
        created = row is None
        if row is None:
            if expected_generation:
                raise Conflict(
                    f"agent {agent.tenant}/{agent.name} does not exist, but generation {expected_generation} "
                    "was expected; send expected_generation 0 to create it"
                )
            agent_id = str(uuid.uuid4())
            status = agent.status or AgentStatus.ACTIVE
            visibility = agent.visibility or Visibility.PRIVATE
            lease_ttl_ms = _lease_ms(agent.lease_ttl_s, 0)
            conn.execute(
                _INSERT_AGENT,
                dict(
                    id=agent_id,
                    tenant_id=agent.tenant,
                    name=agent.name,
                    generation=1,
                    created_at=now,
                    **_agent_values(agent, status, visibility, lease_ttl_ms, now),
                ),
            )
            stored_caps: dict[tuple[str, str], Any] = {}
            agent_changed = True
        else:
            agent_id = row["id"]
            _check_generation(row["generation"], expected_generation, agent)
            status = agent.status or AgentStatus(row["status"])
            visibility = agent.visibility or Visibility(row["visibility"])
            lease_ttl_ms = _lease_ms(agent.lease_ttl_s, row["lease_ttl_ms"])
            agent_changed = (
                row["lease_ttl_ms"] != lease_ttl_ms
                or row["kind"] != agent.kind.value
                or row["endpoint"] != agent.endpoint
                or row["description"] != agent.description
                or dict(row["labels"]) != agent.labels
                or row["status"] != status.value
                or row["visibility"] != visibility.value
                or list(row["shared_with"]) != list(agent.shared_with)
            )
            stored_caps = {
                (r["name"], r["version"]): r
                for r in conn.execute(select(t.capabilities).where(t.capabilities.c.agent_id == agent_id))
                .mappings()
                .all()
            }

        wanted = {cap.key for cap in agent.capabilities}
        removed = [r["id"] for key, r in stored_caps.items() if key not in wanted]
        stored_ids = [r["id"] for r in stored_caps.values()]
        stored_hashes = {
            sv.space_id: _vector_column(conn, sv.space_id, stored_ids, t.capability_vectors.c.text_sha256)
            for sv in (primary, *more)
        }
        new_vectors: dict[str, npt.NDArray[np.float32]] = {}
        retexted: list[str] = []  # capabilities whose rendered text may have changed in any template
        caps_changed = bool(removed)
        other_vectors_changed = False  # only another live space gained a vector: no new generation
        for i, (cap, text_hash) in enumerate(zip(agent.capabilities, text_hashes, strict=True)):
            old = stored_caps.get(cap.key)
            if old is None:
                cap_id = str(uuid.uuid4())
                conn.execute(
                    _INSERT_CAPABILITY,
                    dict(id=cap_id, agent_id=agent_id, created_at=now, updated_at=now, **capability_values(cap)),
                )
                caps_changed = True
            else:
                cap_id = old["id"]
                if capability_from_row(old).content() != cap.content():
                    conn.execute(
                        update(t.capabilities)
                        .where(t.capabilities.c.id == cap_id)
                        .values(updated_at=now, **capability_values(cap))
                    )
                    caps_changed = True
                    retexted.append(cap_id)
                elif row is not None and (row["description"] != agent.description):
                    retexted.append(cap_id)  # a template may show the agent's description
            if stored_hashes[space_id].get(cap_id) != text_hash:
                exists = cap_id in stored_hashes[space_id]
                self._put_vector(conn, cap_id, space_id, text_hash, vectors[text_hash], now, exists)
                new_vectors[cap_id] = vector_from_bytes(vectors[text_hash])
                caps_changed = True
            for other in more:
                other_hash = other.hashes[i]
                if stored_hashes[other.space_id].get(cap_id) != other_hash:
                    exists = cap_id in stored_hashes[other.space_id]
                    self._put_vector(conn, cap_id, other.space_id, other_hash, other.vectors[other_hash], now, exists)
                    other_vectors_changed = True
        if retexted:
            _forget_vectors_elsewhere(conn, retexted, {primary.space_id, *(o.space_id for o in more)})
        if removed:
            conn.execute(delete(t.capabilities).where(t.capabilities.c.id.in_(removed)))
        if document is not None:
            _put_document(conn, agent_id, document, now)

        if not (agent_changed or caps_changed):
            # Nothing changed; a leased agent's registration still renews its lease, and vectors new to
            # another live space are logged so that every replica's index of that space gets them.
            op = ""
            if lease_ttl_ms:
                self._set_lease(conn, agent_id, lease_ttl_ms, now)
                op = "lease"
            elif other_vectors_changed:
                op = "vectors"
            return _Pending(
                agent.tenant,
                agent_id,
                op,
                lambda observed, unchanged: WriteResult(
                    agent=unchanged, seq=0, change=CatalogChange(seq=0), observed_seq=observed
                ),
            )
        if not created:
            conn.execute(
                update(t.agents)
                .where(t.agents.c.id == agent_id)
                .values(
                    generation=t.agents.c.generation + 1,
                    **_agent_values(agent, status, visibility, lease_ttl_ms, now),
                )
            )
        hashes = {cap.key: h for cap, h in zip(agent.capabilities, text_hashes, strict=True)}

        def finish(seq: int, stored: Agent) -> WriteResult:
            upserts = tuple(
                _entry(stored, cap, new_vectors.get(cap.id), hashes[cap.key]) for cap in stored.capabilities
            )
            return WriteResult(
                agent=stored,
                seq=seq,
                change=CatalogChange(seq=seq, upserts=upserts, removed=tuple(removed)),
                created=created,
            )

        return _Pending(agent.tenant, agent_id, "create" if created else "update", finish)

    def update_status(self, ref: AgentRef, status: AgentStatus, expected_generation: int) -> WriteResult:
        now = now_utc()
        with self._begin() as conn:
            row = self._find_agent_row(conn, ref, for_update=True)
            stored = agent_from_row(row, ())
            _check_generation(row["generation"], expected_generation, stored)
            if row["status"] == status.value:
                agent = self._load_agent(conn, row["id"])
                return WriteResult(
                    agent=agent, seq=0, change=CatalogChange(seq=0), observed_seq=changelog.last_seq(conn)
                )
            conn.execute(
                update(t.agents)
                .where(t.agents.c.id == row["id"])
                .values(status=status.value, generation=t.agents.c.generation + 1, updated_at=now)
            )
            seq = self._log(conn, row["tenant_id"], row["id"], "status", now)
            agent = self._load_agent(conn, row["id"])
        upserts = tuple(_entry(agent, cap, None) for cap in agent.capabilities)
        return WriteResult(agent=agent, seq=seq, change=CatalogChange(seq=seq, upserts=upserts))

    def deregister(self, ref: AgentRef, expected_generation: int) -> WriteResult:
        now = now_utc()
        with self._begin() as conn:
            row = self._find_agent_row(conn, ref, for_update=True)
            _check_generation(row["generation"], expected_generation, agent_from_row(row, ()))
            cap_ids = list(
                conn.execute(select(t.capabilities.c.id).where(t.capabilities.c.agent_id == row["id"])).scalars()
            )
            conn.execute(delete(t.agents).where(t.agents.c.id == row["id"]))
            seq = self._log(conn, row["tenant_id"], row["id"], "delete", now)
        return WriteResult(agent=None, seq=seq, change=CatalogChange(seq=seq, removed=tuple(cap_ids)))

    def renew_lease(self, ref: AgentRef, ttl_s: float | None) -> tuple[Agent, int]:
        """A heartbeat: the lease runs `ttl_s` (or the stored TTL) from now. Returns the agent and the seq."""
        now = now_utc()
        with self._begin() as conn:
            row = self._find_agent_row(conn, ref, for_update=True)
            ttl_ms = _lease_ms(ttl_s, row["lease_ttl_ms"])
            if not ttl_ms:
                raise FailedPrecondition(
                    f"agent {row['tenant_id']}/{row['name']} has no lease to renew; send lease_ttl with the "
                    "heartbeat, or register the agent with one"
                )
            seq = self._renew(conn, row["tenant_id"], row["id"], ttl_ms, now)
            agent = agent_from_row(
                dict(row) | {"lease_ttl_ms": ttl_ms, "lease_expires_at": _lease_end(now, ttl_ms)}, ()
            )
        return agent, seq

    def expired_agents(self, before: datetime, limit: int = 500) -> list[str]:
        """Ids of agents whose lease ran out before `before`."""
        with self._connect() as conn:
            return list(
                conn.execute(
                    select(t.agents.c.id)
                    .where(t.agents.c.lease_expires_at.is_not(None), t.agents.c.lease_expires_at < before)
                    .order_by(t.agents.c.lease_expires_at)
                    .limit(limit)
                ).scalars()
            )

    def remove_if_expired(self, agent_id: str, before: datetime) -> int:
        """Remove an agent whose lease ran out before `before` (and was not renewed since); its seq, or 0."""
        with self._begin() as conn:
            row = conn.execute(select(t.agents).where(t.agents.c.id == agent_id).with_for_update()).mappings().first()
            if row is None or row["lease_expires_at"] is None or utc(row["lease_expires_at"]) >= before:
                return 0
            conn.execute(delete(t.agents).where(t.agents.c.id == agent_id))
            return self._log(conn, row["tenant_id"], agent_id, "expire", now_utc())

    # -- the index's view ----------------------------------------------------------------------------

    def index_state(
        self, agent_ids: Collection[str], known_hashes: Mapping[int, Mapping[str, str]]
    ) -> dict[int, dict[str, list[CatalogEntry]]]:
        """The current index entries of these agents in each space of `known_hashes` (space id ->
        capability id -> text hash the index holds); an agent absent from a space's answer is gone. The
        agents and capabilities are read once for all spaces; a vector only where the text changed."""
        if not agent_ids:
            return {space_id: {} for space_id in known_hashes}
        with self._connect() as conn:
            agent_rows = conn.execute(select(t.agents).where(t.agents.c.id.in_(list(agent_ids)))).mappings().all()
            caps = self._capabilities_of(conn, [r["id"] for r in agent_rows])
            cap_ids = [cap.id for group in caps.values() for cap in group]
            per_space: dict[int, tuple[dict[str, str], dict[str, bytes]]] = {}
            for space_id, known in known_hashes.items():
                hashes: dict[str, str] = _vector_column(conn, space_id, cap_ids, t.capability_vectors.c.text_sha256)
                stale = [cap_id for cap_id, h in hashes.items() if known.get(cap_id) != h]
                per_space[space_id] = hashes, _vector_column(conn, space_id, stale, t.capability_vectors.c.vector)
        agents = [agent_from_row(row, caps.get(row["id"], ())) for row in agent_rows]
        return {
            space_id: {
                agent.id: [
                    _entry(
                        agent, cap, vector_from_bytes(vectors[cap.id]) if cap.id in vectors else None, hashes[cap.id]
                    )
                    for cap in agent.capabilities
                    if cap.id in hashes  # a capability with no vector in this space is not searchable there
                ]
                for agent in agents
            }
            for space_id, (hashes, vectors) in per_space.items()
        }

    # -- agents: reads -------------------------------------------------------------------------------

    def document_of(self, agent_id: str) -> AgentDocument | None:
        """The document the agent was imported from, if it was."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.agent_documents.c.format, t.agent_documents.c.document).where(
                    t.agent_documents.c.agent_id == agent_id
                )
            ).first()
        return AgentDocument(row.format, row.document) if row is not None else None

    def get(self, ref: AgentRef) -> Agent:
        with self._connect() as conn:
            return self._load_agent(conn, self._find_agent_row(conn, ref)["id"])

    def list_agents(self, query: ListAgentsQuery) -> tuple[list[Agent], str]:
        """One page of agents ordered by name, and the token of the next page ('' on the last)."""
        fingerprint = _fingerprint(query)
        after = _decode_token(query.page_token, fingerprint) if query.page_token else None
        stmt = select(t.agents).where(t.agents.c.tenant_id == query.tenant)
        if after is not None:
            stmt = stmt.where(t.agents.c.name > after)
        if query.kinds:
            stmt = stmt.where(t.agents.c.kind.in_([k.value for k in query.kinds]))
        if query.status is not None:
            stmt = stmt.where(t.agents.c.status == query.status.value)
        if query.name_prefix:
            stmt = stmt.where(t.agents.c.name.startswith(query.name_prefix, autoescape=True))
        for key, value in sorted(query.labels.items()):
            stmt = stmt.where(t.agents.c.labels[key].as_string() == value)
        stmt = stmt.order_by(t.agents.c.name).limit(query.page_size + 1)
        with self._connect() as conn:
            rows = conn.execute(stmt).mappings().all()
            page = rows[: query.page_size]
            caps = self._capabilities_of(conn, [r["id"] for r in page])
            agents = [agent_from_row(r, caps.get(r["id"], ())) for r in page]
        token = _encode_token(page[-1]["name"], fingerprint) if len(rows) > query.page_size else ""
        return agents, token

    # -- helpers -------------------------------------------------------------------------------------

    def _begin(self) -> Any:
        return self.engine.begin()

    def _connect(self) -> Any:
        return self.engine.connect()

    @staticmethod
    def _ensure_tenant(conn: Connection, tenant: str, now: datetime) -> None:
        if conn.execute(select(t.tenants.c.id).where(t.tenants.c.id == tenant)).first() is None:
            conn.execute(insert(t.tenants).values(id=tenant, created_at=now))

    @staticmethod
    def _log(conn: Connection, tenant: str, agent_id: str, op: str, now: datetime) -> int:
        return changelog.append(conn, tenant, "agent", agent_id, op, now)

    def _renew(self, conn: Connection, tenant: str, agent_id: str, ttl_ms: int, now: datetime) -> int:
        self._set_lease(conn, agent_id, ttl_ms, now)
        return self._log(conn, tenant, agent_id, "lease", now)

    @staticmethod
    def _set_lease(conn: Connection, agent_id: str, ttl_ms: int, now: datetime) -> None:
        conn.execute(
            update(t.agents)
            .where(t.agents.c.id == agent_id)
            .values(lease_ttl_ms=ttl_ms, lease_expires_at=_lease_end(now, ttl_ms))
        )

    @staticmethod
    def _put_vector(
        conn: Connection,
        cap_id: str,
        space_id: int,
        text_hash: str,
        vector: bytes,
        now: datetime,
        exists: bool,
    ) -> None:
        values = {"text_sha256": text_hash, "vector": vector, "created_at": now}
        if exists:
            conn.execute(
                update(t.capability_vectors)
                .where(
                    t.capability_vectors.c.capability_id == cap_id,
                    t.capability_vectors.c.space_id == space_id,
                )
                .values(**values)
            )
        else:
            conn.execute(_INSERT_VECTOR, dict(capability_id=cap_id, space_id=space_id, **values))

    @staticmethod
    def _find_agent_row(conn: Connection, ref: AgentRef, *, for_update: bool = False) -> Any:
        if ref.id:
            stmt = select(t.agents).where(t.agents.c.id == ref.id)
            if ref.tenant:  # "" only for a cluster operator, who may look in every tenant
                stmt = stmt.where(t.agents.c.tenant_id == ref.tenant)
            what = f"agent id {ref.id}"
        else:
            stmt = select(t.agents).where(t.agents.c.tenant_id == ref.tenant, t.agents.c.name == ref.name)
            what = f"agent {ref.tenant}/{ref.name}"
        if for_update:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).mappings().first()
        if row is None:
            raise NotFound(f"{what} is not registered; `capreg agents list` shows what is")
        return row

    def _load_agent(self, conn: Connection, agent_id: str) -> Agent:
        row = conn.execute(select(t.agents).where(t.agents.c.id == agent_id)).mappings().one()
        return agent_from_row(row, self._capabilities_of(conn, [agent_id]).get(agent_id, ()))

    def _load_agents(self, conn: Connection, agent_ids: list[str]) -> dict[str, Agent]:
        """Several agents by id in two queries (a bulk registration reads back what it wrote)."""
        rows = conn.execute(select(t.agents).where(t.agents.c.id.in_(agent_ids))).mappings().all()
        capabilities = self._capabilities_of(conn, agent_ids)
        return {row["id"]: agent_from_row(row, capabilities.get(row["id"], ())) for row in rows}

    @staticmethod
    def _capabilities_of(conn: Connection, agent_ids: list[str]) -> dict[str, tuple[Any, ...]]:
        if not agent_ids:
            return {}
        rows = conn.execute(
            select(t.capabilities)
            .where(t.capabilities.c.agent_id.in_(agent_ids))
            .order_by(t.capabilities.c.name, t.capabilities.c.version)
        ).mappings()
        grouped: dict[str, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row["agent_id"], []).append(capability_from_row(row))
        return {agent_id: tuple(caps) for agent_id, caps in grouped.items()}


class SpaceVectors(NamedTuple):
    """A write's vectors in one space: the text hash of each capability, and each hash's float32 bytes."""

    space_id: int
    hashes: Sequence[str]
    vectors: dict[str, bytes]


class Registration(NamedTuple):
    """One agent to register: its vectors in the serving space (`primary`) and every other live one."""

    agent: Agent
    expected_generation: int
    primary: SpaceVectors
    more: Sequence[SpaceVectors] = ()
    document: AgentDocument | None = None  # None leaves a stored document as it is


class _Pending(NamedTuple):
    """An agent written but not yet logged: the change-log op ("" when nothing needs logging) and how to
    answer once the caller knows the seq."""

    tenant: str
    agent_id: str
    op: str
    finish: Callable[[int, Agent], WriteResult]  # (seq, the agent as stored) -> the answer


def _vector_column(conn: Connection, space_id: int, cap_ids: list[str], column: Any) -> dict[str, Any]:
    """capability id -> `column` of its row in capability_vectors for the space."""
    if not cap_ids:
        return {}
    vectors = t.capability_vectors.c
    stmt = select(vectors.capability_id, column).where(vectors.space_id == space_id, vectors.capability_id.in_(cap_ids))
    return dict(conn.execute(stmt).all())


def _forget_vectors_elsewhere(conn: Connection, cap_ids: list[str], embedded_into: set[int]) -> None:
    """Drop these capabilities' vectors in building or ready spaces this write did not embed into (a space
    created after the writing process last read the change log): they may be of the old text. They become
    missing, so a backfill embeds the current text and promotion waits for it, instead of a stale vector
    counting as done. The serving space is never touched: the writer always embeds into the one it knows,
    and a capability must not vanish from answers."""
    spaces = t.vector_spaces.c
    elsewhere = select(spaces.id).where(
        spaces.state.in_([SpaceState.BUILDING.value, SpaceState.READY.value]), spaces.id.not_in(embedded_into)
    )
    vectors = t.capability_vectors.c
    conn.execute(
        delete(t.capability_vectors).where(vectors.capability_id.in_(cap_ids), vectors.space_id.in_(elsewhere))
    )


def _agent_values(
    agent: Agent, status: AgentStatus, visibility: Visibility, lease_ttl_ms: int, now: datetime
) -> dict[str, Any]:
    """The agent row's columns a registration writes, on insert and on update alike."""
    return {
        "kind": agent.kind.value,
        "endpoint": agent.endpoint,
        "description": agent.description,
        "labels": agent.labels,
        "status": status.value,
        "visibility": visibility.value,
        "shared_with": list(agent.shared_with),
        "updated_at": now,
        "lease_ttl_ms": lease_ttl_ms,
        "lease_expires_at": _lease_end(now, lease_ttl_ms),
    }


def _lease_ms(ttl_s: float | None, stored_ms: int) -> int:
    return stored_ms if ttl_s is None else round(ttl_s * 1000)


def _lease_end(now: datetime, ttl_ms: int) -> datetime | None:
    return now + timedelta(milliseconds=ttl_ms) if ttl_ms else None


def _entry(agent: Agent, cap: Any, vector: npt.NDArray[np.float32] | None, text_sha256: str = "") -> CatalogEntry:
    assert agent.status is not None
    return CatalogEntry(
        capability=cap,
        agent_id=agent.id,
        agent_name=agent.name,
        tenant=agent.tenant,
        kind=agent.kind,
        endpoint=agent.endpoint,
        labels=agent.labels,
        status=agent.status,
        vector=vector,
        visibility=agent.visibility or Visibility.PRIVATE,
        shared_with=agent.shared_with,
        lease_expires_at=agent.lease_expires_at.timestamp() if agent.lease_expires_at else math.inf,
        text_sha256=text_sha256,
    )


def _check_generation(stored: int, expected: int, agent: Agent) -> None:
    if expected and stored != expected:
        raise Conflict(
            f"agent {agent.tenant}/{agent.name} is at generation {stored}, not {expected}; "
            "re-read it and retry, or send expected_generation 0 to overwrite"
        )


def _fingerprint(query: ListAgentsQuery) -> str:
    """Ties a page token to the filters it was issued for."""
    key = json.dumps(
        [
            query.tenant,
            sorted(k.value for k in query.kinds),
            query.status,
            sorted(query.labels.items()),
            query.name_prefix,
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _encode_token(after: str, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"a": after, "f": fingerprint}).encode()).decode()


def _decode_token(token: str, fingerprint: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, issued_for = data["a"], data["f"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidArgument("page_token", "is not a token this server issued") from exc
    if not isinstance(after, str) or not NAME_RE.match(after):
        raise InvalidArgument("page_token", "is not a token this server issued")
    if issued_for != fingerprint:
        raise InvalidArgument("page_token", "was issued for a different tenant or filters; start from the first page")
    return after


def _put_document(conn: Connection, agent_id: str, document: AgentDocument, now: datetime) -> None:
    """Insert or replace the agent's source document (not indexed, so no change-log row of its own)."""
    values = {"format": document.format, "document": document.document, "updated_at": now}
    found = conn.execute(
        update(t.agent_documents).where(t.agent_documents.c.agent_id == agent_id).values(**values)
    ).rowcount
    if not found:
        conn.execute(insert(t.agent_documents).values(agent_id=agent_id, **values))
