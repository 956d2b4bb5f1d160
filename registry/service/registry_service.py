"""Register, read, list, update and remove agents; a write answers once the index reflects it.

The index changes only through the change-log follower (the same path on every replica), so a write
here commits, then waits briefly for the follower to pass its seq: the writer reads its writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np

from registry.domain import validation as v
from registry.domain.errors import InvalidArgument, NotFound
from registry.domain.models import Agent, AgentDocument, AgentRef, AgentStatus, ListAgentsQuery, WriteResult
from registry.embedding.template import render, text_hash
from registry.service.calls import settle
from registry.service.serving import ServingSpace, Spaces
from registry.store.repository import Registration, RegistryStore, SpaceVectors, vector_to_bytes
from registry.telemetry import current

log = logging.getLogger(__name__)
MIN_LEASE_S = 1.0
MAX_LEASE_S = 86_400.0
MAX_BATCH_AGENTS = 1000  # per RegisterAgents call: bounded memory and transaction length


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
        return (await self._register([(agent, expected_generation)], document=document, field=_single))[0]

    async def register_many(self, agents: Sequence[tuple[Agent, int]]) -> list[WriteResult]:
        """Register (agent, expected_generation) pairs in one transaction, all or none: the bulk path. The
        texts of all of them share model calls, and the follower applies them as one batch."""
        if not agents:
            raise InvalidArgument("agents", "send at least one agent")
        if len(agents) > MAX_BATCH_AGENTS:
            raise InvalidArgument("agents", f"has {len(agents)} agents; send at most {MAX_BATCH_AGENTS} per call")
        return await self._register(agents, document=None, field=_in_batch)

    async def _register(
        self,
        agents: Sequence[tuple[Agent, int]],
        *,
        document: AgentDocument | None,
        field: Callable[[int], str],
    ) -> list[WriteResult]:
        checked: list[tuple[Agent, int]] = []
        seen: dict[tuple[str, str], int] = {}
        for i, (given, expected_generation) in enumerate(agents):
            prefix = field(i) + "agent"
            agent = replace(given, tenant=v.tenant_or_default(given.tenant, f"{prefix}.tenant"))
            v.validate_agent(agent, prefix)
            validate_lease_ttl(agent.lease_ttl_s, f"{prefix}.lease_ttl", allow_zero=True)
            v.check_generation(expected_generation, field(i) + "expected_generation")
            if (first := seen.setdefault((agent.tenant, agent.name), i)) != i:
                raise InvalidArgument(f"{prefix}.name", f"{agent.name!r} is also agents[{first}]; send each agent once")
            checked.append((agent, expected_generation))
        supplied = [self._supplied_vectors(agent, field(i) + "agent") for i, (agent, _) in enumerate(checked)]
        telemetry = current()
        capabilities = sum(len(agent.capabilities) for agent, _ in checked)
        with telemetry.span("embed", **{"capreg.capabilities": capabilities}):
            per_space = [
                await self._vectors_for(
                    live, [agent for agent, _ in checked], [s.get(live.space.name, {}) for s in supplied]
                )
                for live in self._spaces.live()
            ]
        registrations = [
            Registration(agent, generation, per_space[0][i], [space[i] for space in per_space[1:]], document)
            for i, (agent, generation) in enumerate(checked)
        ]
        with telemetry.span("database", **{"db.operation": "register agent", "capreg.agents": len(registrations)}):
            results = await asyncio.to_thread(self._store.register_many, registrations, bulk=field is _in_batch)
        with telemetry.span("wait_for_index", **{"capreg.token": max(r.token for r in results)}):
            await self._settle(max(r.token for r in results))
        return results

    async def _vectors_for(
        self, live: ServingSpace, agents: Sequence[Agent], supplied: Sequence[dict[int, tuple[str, bytes]]]
    ) -> list[SpaceVectors]:
        """Each agent's capability text hashes and vectors in one space: the caller's, stored, or embedded
        now (every missing text of every agent in one go, so they share model calls)."""
        space = live.space
        all_hashes: list[list[str]] = []
        vectors: dict[str, bytes] = {}
        texts: dict[str, str] = {}
        for agent, given in zip(agents, supplied, strict=True):
            rendered = [render(space.template, agent, cap) for cap in agent.capabilities]
            hashes = [given[i][0] if i in given else text_hash(text) for i, text in enumerate(rendered)]
            vectors.update({h: vector for h, vector in given.values()})
            texts.update({h: text for i, (h, text) in enumerate(zip(hashes, rendered, strict=True)) if i not in given})
            all_hashes.append(hashes)
        wanted = {h for hashes in all_hashes for h in hashes}
        vectors.update(await asyncio.to_thread(self._store.vectors_by_text, space.id, wanted - set(vectors)))
        missing = [(h, text) for h, text in texts.items() if h not in vectors]
        if missing:
            embedded = await live.batcher.embed_many([text for _, text in missing])
            for (h, _), vector in zip(missing, embedded, strict=True):
                vectors[h] = vector_to_bytes(np.asarray(vector, dtype=np.float32))
        return [SpaceVectors(space.id, hashes, {h: vectors[h] for h in hashes}) for hashes in all_hashes]

    def _supplied_vectors(self, agent: Agent, prefix: str) -> dict[str, dict[int, tuple[str, bytes]]]:
        """Capabilities that bring their own vector: space name -> capability index -> (hash, float32
        bytes), checked against that space. Other live spaces embed those capabilities' text."""
        supplied: dict[str, dict[int, tuple[str, bytes]]] = {}
        for i, cap in enumerate(agent.capabilities):
            if cap.supplied_vector is None:
                continue
            field = f"{prefix}.capabilities[{i}].vector"
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


def _single(_: int) -> str:
    """Field paths of RegisterAgentRequest: `agent.name`, `expected_generation`."""
    return ""


def _in_batch(i: int) -> str:
    """Field paths of RegisterAgentsRequest: `agents[3].agent.name`, `agents[3].expected_generation`."""
    return f"agents[{i}]."
