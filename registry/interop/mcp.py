"""MCP Registry server.json documents (with tools/list results) to capreg agents and back, with no I/O.

A server becomes a TOOL agent whose capabilities are its tools: those of a tools/list result where the
caller has one, else those the publisher listed under server.json's publisher-provided _meta, else one
capability that describes the whole server. What capreg does not model (package arguments, environment
variables, the repository) stays in the source the export starts from."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.domain.errors import InvalidArgument
from registry.domain.models import Agent, AgentKind, Capability
from registry.domain.validation import (
    MAX_CAPABILITIES,
    MAX_DESCRIPTION,
    MAX_ENDPOINT,
    MAX_LIST_ITEMS,
    MAX_VERSION,
    tenant_or_default,
)
from registry.interop.a2a import ImportedAgent, export_version, in_source_order, read_unique
from registry.interop.jsonpaths import (
    MAX_RAW_NAME,
    MAX_TITLE,
    Node,
    agent_name,
    as_objects,
    capability_name,
    headed,
    is_array,
    optional,
    semver,
    shown,
    unheaded,
)

FORMAT_MCP_SERVER = "mcp-server"
SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json"
PUBLISHER_META = "io.modelcontextprotocol.registry/publisher-provided"

LABEL_NAME = "mcp.name"  # the server.json name, which the agent name cannot be turned back into
LABEL_VERSION = "mcp.version"  # the version as written
LABEL_TRANSPORT = "mcp.transport"  # the first remote's type, else the first package's transport type
LABEL_REGISTRY_TYPE = "mcp.registry_type"  # the first package's registryType, where there are packages

REGISTRY_TYPES = ("npm", "pypi", "oci", "nuget", "mcpb")
PACKAGE_TRANSPORTS = ("stdio", "streamable-http", "sse")
REMOTE_TRANSPORTS = ("streamable-http", "sse")
MAX_SERVER_NAME = 200  # the schema's
EXPORT_NAMESPACE = "local.capreg"  # for an agent that never came from a server.json
JSON_MODE = "application/json"  # tool arguments are a JSON object; so is a result with an outputSchema

_SERVER_NAME_RE = re.compile(r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+\Z")
_NOT_SERVER_NAME_CHARS_RE = re.compile(r"[^a-zA-Z0-9._-]+")
_URL_RE = re.compile(r"^https?://", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Package:
    registry_type: str
    reference: str  # the endpoint: npm:@acme/weather@1.2.0
    transport: str


def server_to_agent(
    server: Mapping[str, Any], *, tools: Sequence[Mapping[str, Any]] | None = None, tenant: str
) -> ImportedAgent:
    """The TOOL agent a server.json describes, with `tools` (a tools/list result's `tools` array) as its
    capabilities where given. InvalidArgument names the JSON path at fault (`server.…` or `tools[i].…`).

    The source kept for export is the server.json, with `tools` (when given and not empty) put under the
    publisher-provided _meta key, where export writes tools, so that their schemas survive."""
    tenant = tenant_or_default(tenant, "tenant")
    root = Node.root(server, "server")
    server_name = root.string("name", MAX_SERVER_NAME)
    if len(server_name) < 3 or not _SERVER_NAME_RE.match(server_name):
        raise InvalidArgument(
            root.at("name"),
            f"{shown(server_name)} is not a server name: expected a reverse-DNS namespace and a name joined by "
            "one slash, such as io.github.acme/weather",
        )
    name = agent_name(server_name, root.at("name"))
    title = root.opt_string("title", MAX_TITLE)
    description = headed(title, root.string("description", MAX_DESCRIPTION), root.at("description"), MAX_DESCRIPTION)
    written_version = root.string("version", MAX_VERSION)
    version = semver(written_version, root.at("version"))
    packages = [_read_package(p) for p in root.opt_objs("packages", MAX_LIST_ITEMS)]
    remotes = [_read_remote(r) for r in root.opt_objs("remotes", MAX_LIST_ITEMS)]
    if not packages and not remotes:
        raise InvalidArgument(
            root.path,
            "has neither packages nor remotes; expected at least one package (how to install and run the "
            "server) or remote (a URL it serves at)",
        )
    labels = {LABEL_NAME: server_name, LABEL_VERSION: written_version}
    if remotes:
        labels[LABEL_TRANSPORT], endpoint = remotes[0]
    else:
        labels[LABEL_TRANSPORT], endpoint = packages[0].transport, packages[0].reference
    if packages:
        labels[LABEL_REGISTRY_TYPE] = packages[0].registry_type
    source = copy.deepcopy(dict(server))
    if tools is not None:
        tool_nodes = as_objects(tools, "tools", MAX_CAPABILITIES)
        if tools:
            _publisher_meta(source)["tools"] = copy.deepcopy(list(tools))
    else:
        tool_nodes = _meta_tools(root)
    if tool_nodes:
        capabilities = _read_tools(tool_nodes, version)
    else:
        capabilities = (_server_capability(server_name, description, version, root.at("name")),)
    agent = Agent(
        tenant=tenant,
        name=name,
        kind=AgentKind.TOOL,
        endpoint=endpoint,
        labels=labels,
        description=description,
        capabilities=capabilities,
    )
    return ImportedAgent(agent, FORMAT_MCP_SERVER, source)


def _read_package(package: Node) -> _Package:
    registry_type = package.choice("registryType", REGISTRY_TYPES)
    identifier = package.string("identifier", MAX_ENDPOINT)
    version = package.opt_string("version", MAX_VERSION)
    transport = package.obj("transport")
    transport_type = transport.choice("type", PACKAGE_TRANSPORTS)
    transport.opt_string("url", MAX_ENDPOINT)
    reference = f"{registry_type}:{identifier}" + (f"@{version}" if version else "")
    if len(reference) > MAX_ENDPOINT:
        raise InvalidArgument(
            package.at("identifier"),
            f"makes the endpoint {shown(reference)} of {len(reference)} characters; the limit is {MAX_ENDPOINT}",
        )
    return _Package(registry_type, reference, transport_type)


def _read_remote(remote: Node) -> tuple[str, str]:
    """The remote's transport type and URL."""
    return remote.choice("type", REMOTE_TRANSPORTS), remote.string("url", MAX_ENDPOINT)


def _meta_tools(root: Node) -> tuple[Node, ...]:
    meta = root.opt_obj("_meta")
    provided = meta.opt_obj(PUBLISHER_META) if meta is not None else None
    return provided.opt_objs("tools", MAX_CAPABILITIES) if provided is not None else ()


def _read_tools(tools: Sequence[Node], version: str) -> tuple[Capability, ...]:
    return read_unique(tools, "name", "tool names", lambda tool: _read_tool(tool, version))


def _read_tool(tool: Node, version: str) -> Capability:
    tool_name = tool.string("name", MAX_RAW_NAME)
    name = capability_name(tool_name, tool.at("name"))
    title = tool.opt_string("title", MAX_TITLE)
    body = tool.string(
        "description", MAX_DESCRIPTION, hint="; capreg finds a tool by its description (MCP lets a tool omit it)"
    )
    tool.opt_obj("inputSchema")
    output_schema = tool.opt_obj("outputSchema")
    tool.opt_obj("annotations")
    return Capability(
        name=name,
        version=version,
        description=headed(title if title != tool_name else None, body, tool.at("description"), MAX_DESCRIPTION),
        input_modes=(JSON_MODE,),
        output_modes=(JSON_MODE,) if output_schema is not None else (),
    )


def _server_capability(server_name: str, description: str, version: str, path: str) -> Capability:
    """For a server that lists no tools: one capability, named after the server, that describes it."""
    return Capability(
        name=capability_name(server_name.rsplit("/", 1)[-1], path), version=version, description=description
    )


def _publisher_meta(server: dict[str, Any]) -> dict[str, Any]:
    """server._meta[PUBLISHER_META], made a fresh dict (created where absent) that the caller may write."""
    meta = server.get("_meta")
    meta = server["_meta"] = dict(meta) if isinstance(meta, Mapping) else {}
    provided = meta.get(PUBLISHER_META)
    provided = meta[PUBLISHER_META] = dict(provided) if isinstance(provided, Mapping) else {}
    return provided


def agent_to_server(agent: Agent, *, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """The server.json for a registered TOOL agent.

    Starts from `source`, the server.json it was imported from, so that packages, repository and _meta
    survive, and writes over it what capreg holds: description (and title), version, the endpoint where it
    changed, and the tools, one per current capability, under the publisher-provided _meta key."""
    server = copy.deepcopy(dict(source)) if source is not None else _minimal_server(agent)
    text = agent.description or agent.name
    title = server.get("title")
    body = unheaded(text, title if isinstance(title, str) else None)
    if body is None:  # the title no longer heads the description
        server.pop("title", None)
    server["description"] = text if body is None else body
    server["version"] = export_version(agent, LABEL_VERSION)
    _write_endpoint(server, agent)
    _write_tools(server, agent)
    return server


def _minimal_server(agent: Agent) -> dict[str, Any]:
    name = agent.labels.get(LABEL_NAME, "")
    if not _SERVER_NAME_RE.match(name):
        name = f"{EXPORT_NAMESPACE}/{_NOT_SERVER_NAME_CHARS_RE.sub('-', agent.name)}"
    return {"$schema": SCHEMA_URL, "name": name, "description": "", "version": ""}


def _source_endpoint(server: Mapping[str, Any]) -> str | None:
    root = Node.root(server, "server")
    remotes = root.opt_objs("remotes", MAX_LIST_ITEMS)
    if remotes:
        return _read_remote(remotes[0])[1]
    packages = root.opt_objs("packages", MAX_LIST_ITEMS)
    return _read_package(packages[0]).reference if packages else None


def _write_endpoint(server: dict[str, Any], agent: Agent) -> None:
    """Where the agent's endpoint differs from the one the source gives: a URL becomes the first remote, a
    package reference the first package (and the remotes go, which import would prefer)."""
    endpoint = agent.endpoint
    if optional(_source_endpoint, server) == endpoint:
        return
    transport = agent.labels.get(LABEL_TRANSPORT, "")
    if _URL_RE.match(endpoint):
        remotes = server.get("remotes")
        if is_array(remotes) and remotes and isinstance(remotes[0], Mapping):
            server["remotes"] = [{**remotes[0], "url": endpoint}, *remotes[1:]]
        else:
            server["remotes"] = [
                {"type": transport if transport in REMOTE_TRANSPORTS else REMOTE_TRANSPORTS[0], "url": endpoint}
            ]
        return
    package = _package(endpoint, transport)
    if package is None:
        raise InvalidArgument(
            "agent.endpoint",
            f"{shown(endpoint)} is neither an http(s) URL nor a package reference such as npm:@acme/weather@1.2.0;"
            " a server.json must say where the server is",
        )
    packages = server.get("packages")
    if is_array(packages) and packages and isinstance(packages[0], Mapping):
        first = {k: v for k, v in packages[0].items() if k not in ("version", "transport")}
        package = {**first, **package}
        server["packages"] = [package, *packages[1:]]
    else:
        server["packages"] = [package]
    server.pop("remotes", None)


def _package(reference: str, transport: str) -> dict[str, Any] | None:
    """The package a `type:identifier@version` endpoint names, or None."""
    registry_type, _, rest = reference.partition(":")
    if registry_type not in REGISTRY_TYPES or not rest:
        return None
    at = rest.rfind("@")  # past a scope's leading @ (npm:@acme/weather)
    package: dict[str, Any] = {"registryType": registry_type, "identifier": rest[:at] if at > 0 else rest}
    if at > 0:
        package["version"] = rest[at + 1 :]
    package["transport"] = {"type": transport if transport in PACKAGE_TRANSPORTS else PACKAGE_TRANSPORTS[0]}
    return package


def _write_tools(server: dict[str, Any], agent: Agent) -> None:
    meta = server.get("_meta")
    provided = meta.get(PUBLISHER_META) if isinstance(meta, Mapping) else None
    sources = _source_tools(provided.get("tools") if isinstance(provided, Mapping) else None)
    if not sources and _describes_server(agent, server):
        return  # the one capability import made for a server without tools
    ordered = in_source_order(agent.capabilities, sources)
    _publisher_meta(server)["tools"] = [_tool(c, sources.get(c.name)) for c in ordered]


def _source_tools(tools: object) -> dict[str, Mapping[str, Any]]:
    """The source's tools by the capability name each became."""
    found: dict[str, Mapping[str, Any]] = {}
    for tool in tools if is_array(tools) else ():
        if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
            name = optional(capability_name, tool["name"], "name")
            if name is not None:
                found.setdefault(name, tool)
    return found


def _describes_server(agent: Agent, server: Mapping[str, Any]) -> bool:
    server_name = server.get("name")
    if len(agent.capabilities) != 1 or not isinstance(server_name, str):
        return False
    only = agent.capabilities[0]
    expected = optional(_server_capability, server_name, agent.description, only.version, "name")
    return (
        expected is not None
        and (only.name, only.description) == (expected.name, expected.description)
        and not (only.input_modes or only.output_modes or only.tags or only.examples)
    )


def _tool(capability: Capability, source: Mapping[str, Any] | None) -> dict[str, Any]:
    tool: dict[str, Any]
    if source is not None:
        tool = copy.deepcopy(dict(source))
    else:
        tool = {"name": capability.name, "description": "", "inputSchema": {"type": "object"}}
    title = tool.get("title")
    head = title if isinstance(title, str) and title != tool["name"] else None
    body = unheaded(capability.description, head)
    if body is None and head is not None:  # the title no longer heads the description
        tool.pop("title")
    tool["description"] = capability.description if body is None else body
    if (JSON_MODE in capability.output_modes) != isinstance(tool.get("outputSchema"), Mapping):
        if JSON_MODE in capability.output_modes:  # import reads a JSON result from an outputSchema
            tool["outputSchema"] = {"type": "object"}
        else:
            tool.pop("outputSchema", None)
    return tool
