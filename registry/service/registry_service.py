"""Register, read, list, update and remove agents; a write answers once the index reflects it.

The index changes only through the change-log follower (the same path on every replica), so a write
here commits, then waits briefly for the follower to pass its seq: the writer reads its writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np

from registry.domain import validation as v
from registry.domain.errors import InvalidArgument, NotFound
from registry.domain.models import Agent, AgentDocument, AgentRef, AgentStatus, ListAgentsQuery, WriteResult
from registry.embedding.template import render, text_hash
from registry.service.calls import settle
from registry.service.serving import ServingSpace, Spaces
from registry.store.repository import RegistryStore, SpaceVectors, vector_to_bytes
from registry.telemetry import current

log = logging.getLogger(__name__)
MIN_LEASE_S = 1.0
MAX_LEASE_S = 86_400.0


class RegistryService:
    def __init__(self, store: RegistryStore, spaces: Spaces, settle: Callable[[int], Awaitable[None]]):
        self._store = store
        self._spaces = spaces
        self._settle_fn = settle

    async def _settle(self, token: int) -> None:
        await settle(self._settle_fn, token)

    async def register(
        self, agent: Agent, expected_generation: int = 0, *, document: AgentDocument | None = None
    ) -> WriteResult:
        """Validate, embed (into every live space) only texts never embedded before, commit, then wait
        for the index."""
        agent = _with_tenant(agent)
        v.validate_agent(agent)
        validate_lease_ttl(agent.lease_ttl_s, "agent.lease_ttl", allow_zero=True)
        v.check_generation(expected_generation, "expected_generation")
        supplied = self._supplied_vectors(agent)
        telemetry = current()
        with telemetry.span("embed", **{"capreg.capabilities": len(agent.capabilities)}):
            primary, *others = [
                await self._vectors_for(live, agent, supplied.get(live.space.name, {})) for live in self._spaces.live()
            ]
        with telemetry.span("database", **{"db.operation": "register agent"}):
            result = await asyncio.to_thread(
                self._store.register,
                agent,
                expected_generation,
                primary.space_id,
                primary.hashes,
                primary.vectors,
                more=others,
                document=document,
            )
        with telemetry.span("wait_for_index", **{"capreg.token": result.token}):
            await self._settle(result.token)
        return result

    async def _vectors_for(
        self, live: ServingSpace, agent: Agent, supplied: dict[int, tuple[str, bytes]]
    ) -> SpaceVectors:
        """Each capability's text hash and vector in one space: the caller's, stored, or embedded now."""
        space = live.space
        texts = [render(space.template, agent, cap) for cap in agent.capabilities]
        hashes = [supplied[i][0] if i in supplied else text_hash(text) for i, text in enumerate(texts)]
        vectors = {h: vector for h, vector in supplied.values()}
        vectors.update(await asyncio.to_thread(self._store.vectors_by_text, space.id, set(hashes) - set(vectors)))
        missing = [(h, text) for h, text in dict(zip(hashes, texts, strict=True)).items() if h not in vectors]
        if missing:
            embedded = await live.batcher.embed_many([text for _, text in missing])
            for (h, _), vector in zip(missing, embedded, strict=True):
                vectors[h] = vector_to_bytes(np.asarray(vector, dtype=np.float32))
        return SpaceVectors(space.id, hashes, vectors)

    def _supplied_vectors(self, agent: Agent) -> dict[str, dict[int, tuple[str, bytes]]]:
        """Capabilities that bring their own vector: space name -> capability index -> (hash, float32
        bytes), checked against that space. Other live spaces embed those capabilities' text."""
        supplied: dict[str, dict[int, tuple[str, bytes]]] = {}
        for i, cap in enumerate(agent.capabilities):
            if cap.supplied_vector is None:
                continue
            field = f"agent.capabilities[{i}].vector"
            try:
                live = (
                    self._spaces.get(cap.supplied_vector_space) if cap.supplied_vector_space else self._spaces.serving
                )
            except NotFound as exc:
                raise NotFound(f"{field}.space: {exc}") from exc
            vector = np.asarray(cap.supplied_vector, dtype=np.float32)
            v.validate_vector(vector, live.space.dim, f"{field}.values")
            data = vector_to_bytes(vector)
            supplied.setdefault(live.space.name, {})[i] = (text_hash("vector:" + data.hex()), data)
        return supplied

    async def get(self, ref: AgentRef) -> Agent:
        return await asyncio.to_thread(self._store.get, v.validate_ref(ref))

    async def list(self, query: ListAgentsQuery) -> tuple[list[Agent], str]:
        v.validate_list_query(query)
        return await asyncio.to_thread(self._store.list_agents, query)

    async def update_status(self, ref: AgentRef, status: AgentStatus, expected_generation: int = 0) -> WriteResult:
        ref = v.validate_ref(ref)
        v.check_generation(expected_generation, "expected_generation")
        result = await asyncio.to_thread(self._store.update_status, ref, status, expected_generation)
        await self._settle(result.token)
        return result

    async def deregister(self, ref: AgentRef, expected_generation: int = 0) -> WriteResult:
        ref = v.validate_ref(ref)
        v.check_generation(expected_generation, "expected_generation")
        result = await asyncio.to_thread(self._store.deregister, ref, expected_generation)
        await self._settle(result.token)
        return result

    async def heartbeat(self, ref: AgentRef, lease_ttl_s: float | None = None) -> tuple[Agent, int]:
        """Renew the agent's lease: it runs lease_ttl_s (or the stored TTL) from now."""
        ref = v.validate_ref(ref)
        validate_lease_ttl(lease_ttl_s, "lease_ttl", allow_zero=False)
        agent, seq = await asyncio.to_thread(self._store.renew_lease, ref, lease_ttl_s)
        await self._settle(seq)
        return agent, seq

    async def remove_expired(self, grace_s: float) -> int:
        """Remove agents whose lease ran out more than grace_s ago; how many were removed."""
        before = datetime.now(UTC) - timedelta(seconds=grace_s)
        removed = 0
        for agent_id in await asyncio.to_thread(self._store.expired_agents, before):
            if seq := await asyncio.to_thread(self._store.remove_if_expired, agent_id, before):
                removed += 1
                current().leases_removed.add(1)
                log.info("removed agent %s: its lease ran out more than %g s ago (change %d)", agent_id, grace_s, seq)
        return removed


def validate_lease_ttl(ttl_s: float | None, field: str, *, allow_zero: bool) -> None:
    if ttl_s is None or (allow_zero and ttl_s == 0):
        return
    if not MIN_LEASE_S <= ttl_s <= MAX_LEASE_S:
        raise InvalidArgument(
            field,
            f"must be between {MIN_LEASE_S:g} s and {MAX_LEASE_S:g} s" + (" (or 0 for no lease)" if allow_zero else ""),
        )


def _with_tenant(agent: Agent) -> Agent:
    return replace(agent, tenant=v.tenant_or_default(agent.tenant, "agent.tenant"))
