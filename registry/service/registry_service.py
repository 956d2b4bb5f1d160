"""Register, read, list, update and remove agents; keep the serving index in step with each commit."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from registry.domain import validation as v
from registry.domain.errors import NotFound
from registry.domain.models import Agent, AgentRef, AgentStatus, ListAgentsQuery, WriteResult
from registry.embedding.template import render, text_hash
from registry.service.serving import ServingSpace
from registry.store.repository import RegistryStore, vector_to_bytes


class RegistryService:
    def __init__(self, store: RegistryStore, serving: ServingSpace):
        self._store = store
        self._serving = serving

    async def register(self, agent: Agent, expected_generation: int = 0) -> WriteResult:
        """Validate, embed only texts never embedded before, commit, then update the index."""
        agent = _with_tenant(agent)
        v.validate_agent(agent)
        v.check_generation(expected_generation, "expected_generation")
        space = self._serving.space
        supplied = self._supplied_vectors(agent)
        texts = [render(space.template, agent, cap) for cap in agent.capabilities]
        hashes = [supplied[i][0] if i in supplied else text_hash(text) for i, text in enumerate(texts)]
        vectors = {h: vector for h, vector in supplied.values()}
        vectors.update(await asyncio.to_thread(self._store.vectors_by_text, space.id, set(hashes) - set(vectors)))
        missing = [(h, text) for h, text in dict(zip(hashes, texts, strict=True)).items() if h not in vectors]
        if missing:
            embedded = await asyncio.to_thread(self._serving.embedder.embed, [text for _, text in missing])
            for (h, _), vector in zip(missing, embedded, strict=True):
                vectors[h] = vector_to_bytes(np.asarray(vector, dtype=np.float32))
        result = await asyncio.to_thread(self._store.register, agent, expected_generation, space.id, hashes, vectors)
        self._serving.index.apply(result.change)
        return result

    def _supplied_vectors(self, agent: Agent) -> dict[int, tuple[str, bytes]]:
        """Capabilities that bring their own vector: index -> (hash, float32 bytes), checked."""
        space = self._serving.space
        supplied = {}
        for i, cap in enumerate(agent.capabilities):
            if cap.supplied_vector is None:
                continue
            field = f"agent.capabilities[{i}].vector"
            if cap.supplied_vector_space not in ("", space.name):
                raise NotFound(
                    f"{field}.space: vector space {cap.supplied_vector_space!r} is not served here; "
                    f"the serving space is {space.name!r}"
                )
            vector = np.asarray(cap.supplied_vector, dtype=np.float32)
            v.validate_vector(vector, space.dim, f"{field}.values")
            data = vector_to_bytes(vector)
            supplied[i] = (text_hash("vector:" + data.hex()), data)
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
        self._serving.index.apply(result.change)
        return result

    async def deregister(self, ref: AgentRef, expected_generation: int = 0) -> WriteResult:
        ref = v.validate_ref(ref)
        v.check_generation(expected_generation, "expected_generation")
        result = await asyncio.to_thread(self._store.deregister, ref, expected_generation)
        self._serving.index.apply(result.change)
        return result


def _with_tenant(agent: Agent) -> Agent:
    return replace(agent, tenant=v.tenant_or_default(agent.tenant, "agent.tenant"))
