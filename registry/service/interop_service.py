"""Import and export of agents in the formats agents already publish: A2A Agent Cards and MCP server.json.

An import is a registration (the same validation, embedding, transaction, change log and consistency token)
whose agent comes from the document, with the document kept beside it; an export starts from the kept
document and writes the agent's current state over it (registry/interop)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from registry.domain import validation as v
from registry.domain.errors import InvalidArgument, NotFound
from registry.domain.models import Agent, AgentDocument, AgentRef, Visibility, WriteResult
from registry.interop import a2a, mcp
from registry.interop.a2a import ImportedAgent
from registry.service.registry_service import RegistryService
from registry.store.repository import RegistryStore

MAX_DOCUMENT_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class ImportOptions:
    visibility: Visibility | None = None
    shared_with: tuple[str, ...] = ()
    lease_ttl_s: float | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImportResult:
    write: WriteResult
    format: str
    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExportedDocument:
    document: dict[str, Any]
    format: str


class InteropService:
    def __init__(self, registry: RegistryService, store: RegistryStore):
        self._registry = registry
        self._store = store

    async def import_card(self, tenant: str, card_json: str, options: ImportOptions) -> ImportResult:
        card = parse_json(card_json, "card_json", expect=dict)
        imported = a2a.card_to_agent(card, tenant=v.tenant_or_default(tenant, "tenant"))
        return await self._import(imported, options)

    async def import_mcp_server(
        self, tenant: str, server_json: str, tools_json: str, options: ImportOptions
    ) -> ImportResult:
        server = parse_json(server_json, "server_json", expect=dict)
        tools = _tool_list(tools_json) if tools_json.strip() else None
        imported = mcp.server_to_agent(server, tools=tools, tenant=v.tenant_or_default(tenant, "tenant"))
        return await self._import(imported, options)

    async def _import(self, imported: ImportedAgent, options: ImportOptions) -> ImportResult:
        before = await self._existing(imported.agent)
        # Visibility left unset keeps the stored one; so must the tenants it is shared with.
        keep_sharing = options.visibility is None and not options.shared_with and before is not None
        agent = replace(
            imported.agent,
            visibility=before.visibility if keep_sharing and before is not None else options.visibility,
            shared_with=before.shared_with if keep_sharing and before is not None else options.shared_with,
            lease_ttl_s=options.lease_ttl_s,
            labels={**imported.agent.labels, **options.labels},
        )
        document = AgentDocument(imported.format, json.dumps(imported.source, sort_keys=True))
        write = await self._registry.register(agent, document=document)
        added, updated, removed = _capability_changes(before, write.agent)
        return ImportResult(write, imported.format, added, updated, removed)

    async def _existing(self, agent: Agent) -> Agent | None:
        try:
            return await self._registry.get(AgentRef(tenant=agent.tenant, name=agent.name))
        except NotFound:
            return None

    async def export_card(self, ref: AgentRef, format: str) -> ExportedDocument:
        agent, stored = await self._agent_and_document(ref)
        source = _source(stored, a2a.A2A_FORMATS)
        chosen = format or (stored.format if stored is not None and source is not None else a2a.FORMAT_A2A_10)
        return ExportedDocument(a2a.agent_to_card(agent, source=source, format=chosen), chosen)

    async def export_mcp_server(self, ref: AgentRef) -> ExportedDocument:
        agent, stored = await self._agent_and_document(ref)
        source = _source(stored, (mcp.FORMAT_MCP_SERVER,))
        return ExportedDocument(mcp.agent_to_server(agent, source=source), mcp.FORMAT_MCP_SERVER)

    async def _agent_and_document(self, ref: AgentRef) -> tuple[Agent, AgentDocument | None]:
        agent = await self._registry.get(ref)
        return agent, await asyncio.to_thread(self._store.document_of, agent.id)


def parse_json(text: str, field_name: str, *, expect: type | tuple[type, ...]) -> Any:
    """The JSON document in `text`, or INVALID_ARGUMENT on `field_name` saying where it breaks."""
    if not text.strip():
        raise InvalidArgument(field_name, "is empty; send the document as JSON")
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise InvalidArgument(field_name, f"is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            field_name, f"is not JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    if not isinstance(value, expect):
        kind = "an object" if expect is dict else "an object or an array"
        raise InvalidArgument(field_name, f"must be {kind}")
    return value


def _tool_list(tools_json: str) -> Sequence[Mapping[str, Any]]:
    """An MCP tools/list result ({"tools": [...]}) or a bare array of tools; items are checked on import."""
    value = parse_json(tools_json, "tools_json", expect=(dict, list))
    if isinstance(value, dict):
        if not isinstance(value.get("tools"), list):
            raise InvalidArgument("tools_json.tools", "must be the array of tools of a tools/list result")
        value = value["tools"]
    return value  # type: ignore[no-any-return]


def _source(stored: AgentDocument | None, formats: Sequence[str]) -> dict[str, Any] | None:
    if stored is None or stored.format not in formats:
        return None
    document = json.loads(stored.document)
    return document if isinstance(document, dict) else None


def _capability_changes(
    before: Agent | None, after: Agent | None
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(added, updated, removed) capabilities, as name@version."""
    old = {c.key: c for c in before.capabilities} if before is not None else {}
    new = {c.key: c for c in after.capabilities} if after is not None else {}
    added = tuple(f"{n}@{ver}" for n, ver in new if (n, ver) not in old)
    removed = tuple(f"{n}@{ver}" for n, ver in old if (n, ver) not in new)
    updated = tuple(
        f"{n}@{ver}" for (n, ver), cap in new.items() if (n, ver) in old and old[(n, ver)].content() != cap.content()
    )
    return added, updated, removed
