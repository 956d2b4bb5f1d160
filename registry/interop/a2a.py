"""A2A Agent Cards to capreg agents and back, with no I/O.

Two card shapes are read: v0.3 gives its endpoint in a top-level `url` (with `preferredTransport` and
`additionalInterfaces`), v1.0 lists `supportedInterfaces`. Each skill becomes a capability. What capreg
does not model (security schemes, signatures, capability flags) stays in the source the export starts from,
so an unchanged agent exports to the card it came from."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.domain.errors import InvalidArgument
from registry.domain.models import Agent, AgentKind, Capability
from registry.domain.validation import (
    MAX_CAPABILITIES,
    MAX_DESCRIPTION,
    MAX_ENDPOINT,
    MAX_EXAMPLE_LEN,
    MAX_EXAMPLES,
    MAX_LABEL_VALUE,
    MAX_LIST_ITEMS,
    MAX_MODE_LEN,
    MAX_VERSION,
    tenant_or_default,
)
from registry.interop.jsonpaths import (
    MAX_RAW_NAME,
    MAX_TAG_LEN,
    MAX_TITLE,
    Node,
    agent_name,
    as_texts,
    as_tokens,
    capability_name,
    headed,
    is_array,
    optional,
    semver,
    shown,
    unheaded,
)

FORMAT_A2A_03 = "a2a-0.3"
FORMAT_A2A_10 = "a2a-1.0"
A2A_FORMATS = (FORMAT_A2A_03, FORMAT_A2A_10)

LABEL_VERSION = "a2a.version"  # the card's version as written
LABEL_PROTOCOL = "a2a.protocol"  # the protocolVersion, else "0.3" or "1.0"
LABEL_TRANSPORT = "a2a.transport"  # the preferred interface's transport (protocolBinding in v1.0)
LABEL_PROVIDER_ORGANIZATION = "provider.organization"
LABEL_PROVIDER_URL = "provider.url"

DEFAULT_TRANSPORT = "JSONRPC"  # what v0.3 assumes when preferredTransport is absent
PROTOCOL_03 = "0.3.0"
PROTOCOL_10 = "1.0"


@dataclass(frozen=True, slots=True)
class ImportedAgent:
    """An imported document: the agent to register, the format it came in, and the document, which export
    starts from so that what capreg does not model survives."""

    agent: Agent
    format: str
    source: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Interface:
    url: str
    transport: str
    protocol: str


def card_to_agent(card: Mapping[str, Any], *, tenant: str) -> ImportedAgent:
    """The agent an A2A card (v0.3 or v1.0) describes; InvalidArgument names the card's JSON path at fault."""
    tenant = tenant_or_default(tenant, "tenant")
    root = Node.root(card, "card")
    format_, interface = _read_interface(root)
    name = agent_name(root.string("name", MAX_RAW_NAME), root.at("name"))
    description = root.string("description", MAX_DESCRIPTION)
    written_version = root.string("version", MAX_VERSION)
    version = semver(written_version, root.at("version"))
    labels = {
        LABEL_VERSION: written_version,
        LABEL_PROTOCOL: interface.protocol,
        LABEL_TRANSPORT: interface.transport,
    }
    provider = root.opt_obj("provider")
    if provider is not None:
        labels[LABEL_PROVIDER_ORGANIZATION] = provider.string("organization", MAX_LABEL_VALUE)
        labels[LABEL_PROVIDER_URL] = provider.string("url", MAX_LABEL_VALUE)
    defaults = (
        root.tokens("defaultInputModes", MAX_LIST_ITEMS, MAX_MODE_LEN),
        root.tokens("defaultOutputModes", MAX_LIST_ITEMS, MAX_MODE_LEN),
    )
    skills = root.objs("skills", MAX_CAPABILITIES, min_items=1)
    agent = Agent(
        tenant=tenant,
        name=name,
        kind=AgentKind.AGENT,
        endpoint=interface.url,
        labels=labels,
        description=description,
        capabilities=_read_skills(skills, version, defaults),
    )
    return ImportedAgent(agent, format_, copy.deepcopy(dict(card)))


def _read_interface(card: Node) -> tuple[str, _Interface]:
    """The card's shape, told by where its endpoint is, and its preferred interface."""
    v03, v10 = card.has("url"), card.has("supportedInterfaces")
    if v03 == v10:
        raise InvalidArgument(
            card.path,
            f"has {'both' if v03 else 'neither'} `url` {'and' if v03 else 'nor'} `supportedInterfaces`; expected "
            "one: an A2A v0.3 card gives its endpoint in `url` (with `preferredTransport`), a v1.0 card lists "
            "`supportedInterfaces` of {url, protocolBinding}",
        )
    if v03:
        url = card.string("url", MAX_ENDPOINT)
        transport = card.opt_string("preferredTransport", MAX_LABEL_VALUE) or DEFAULT_TRANSPORT
        protocol = card.opt_string("protocolVersion", MAX_LABEL_VALUE) or "0.3"
        for extra in card.opt_objs("additionalInterfaces", MAX_LIST_ITEMS):
            extra.string("url", MAX_ENDPOINT)
            extra.string("transport", MAX_LABEL_VALUE)
        return FORMAT_A2A_03, _Interface(url, transport, protocol)
    interfaces = [
        _Interface(
            interface.string("url", MAX_ENDPOINT),
            interface.string("protocolBinding", MAX_LABEL_VALUE),
            interface.opt_string("protocolVersion", MAX_LABEL_VALUE) or PROTOCOL_10,
        )
        for interface in card.objs("supportedInterfaces", MAX_LIST_ITEMS, min_items=1)
    ]
    return FORMAT_A2A_10, interfaces[0]


def _read_skills(
    skills: Sequence[Node], version: str, defaults: tuple[tuple[str, ...], tuple[str, ...]]
) -> tuple[Capability, ...]:
    return read_unique(skills, "id", "skill ids", lambda skill: _read_skill(skill, version, defaults))


def read_unique(
    items: Sequence[Node], key: str, what: str, read: Callable[[Node], Capability]
) -> tuple[Capability, ...]:
    """Each item (a skill, a tool) read as a capability; two that give one capability name are refused at
    the second's `key`."""
    first_at: dict[str, str] = {}
    capabilities = []
    for item in items:
        capability = read(item)
        if capability.name in first_at:
            raise InvalidArgument(
                item.at(key),
                f"gives the capability name {shown(capability.name)}, as {first_at[capability.name]} does; "
                f"{what} must be unique",
            )
        first_at[capability.name] = item.at(key)
        capabilities.append(capability)
    return tuple(capabilities)


def _read_skill(skill: Node, version: str, defaults: tuple[tuple[str, ...], tuple[str, ...]]) -> Capability:
    skill_id = skill.string("id", MAX_RAW_NAME)
    name = capability_name(skill_id, skill.at("id"))
    title = skill.string("name", MAX_TITLE)
    body = skill.string("description", MAX_DESCRIPTION)
    return Capability(
        name=name,
        version=version,
        description=headed(title if title != skill_id else None, body, skill.at("description"), MAX_DESCRIPTION),
        tags=skill.tokens("tags", MAX_LIST_ITEMS, MAX_TAG_LEN),
        examples=skill.opt_texts("examples", MAX_EXAMPLES, MAX_EXAMPLE_LEN),
        input_modes=skill.opt_tokens("inputModes", MAX_LIST_ITEMS, MAX_MODE_LEN) or defaults[0],
        output_modes=skill.opt_tokens("outputModes", MAX_LIST_ITEMS, MAX_MODE_LEN) or defaults[1],
    )


def agent_to_card(agent: Agent, *, source: Mapping[str, Any] | None, format: str) -> dict[str, Any]:
    """The A2A card (`format` a2a-0.3 or a2a-1.0) for a registered agent.

    Starts from `source`, the card the agent was imported from, so that fields capreg does not model survive,
    and writes over it what capreg holds: name, description, version, endpoint and transport, and one skill
    per current capability (a source skill's own fields are kept where the capability still says the same)."""
    if format not in A2A_FORMATS:
        raise InvalidArgument("format", f"must be one of {', '.join(A2A_FORMATS)}, got {shown(format)}")
    card = copy.deepcopy(dict(source)) if source is not None else _minimal_card(agent, format)
    card["name"] = _card_name(agent, card.get("name"))
    card["description"] = agent.description or agent.name
    card["version"] = export_version(agent, LABEL_VERSION)
    if format == FORMAT_A2A_03:
        _write_v03_interfaces(card, agent)
    else:
        _write_v10_interfaces(card, agent)
    _write_skills(card, agent)
    return card


def export_version(agent: Agent, label: str) -> str:
    """The document's one version: the capabilities' (import gives them all the document's), written as the
    label recorded it ("1.2" for 1.2.0) while the two agree."""
    written = agent.labels.get(label)
    if not agent.capabilities:
        return written or "1.0.0"
    version = agent.capabilities[0].version
    return written if written and optional(semver, written, label) == version else version


def _card_name(agent: Agent, name: object) -> str:
    """The card's human name while it still makes the agent's name, else the agent's name."""
    if isinstance(name, str) and optional(agent_name, name, "name") == agent.name:
        return name
    return agent.name


def _minimal_card(agent: Agent, format_: str) -> dict[str, Any]:
    card: dict[str, Any] = {"name": "", "description": "", "version": ""}
    protocol = agent.labels.get(LABEL_PROTOCOL, "")
    if format_ == FORMAT_A2A_03:
        card["protocolVersion"] = protocol if protocol.startswith("0.3.") else PROTOCOL_03
    organization = agent.labels.get(LABEL_PROVIDER_ORGANIZATION)
    url = agent.labels.get(LABEL_PROVIDER_URL)
    if organization and url:
        card["provider"] = {"organization": organization, "url": url}
    card["capabilities"] = {}
    return card


def _endpoint(agent: Agent) -> tuple[str, str]:
    if not agent.endpoint:
        raise InvalidArgument("agent.endpoint", "is empty; an A2A card needs the URL the agent serves at")
    return agent.endpoint, agent.labels.get(LABEL_TRANSPORT) or DEFAULT_TRANSPORT


def _write_v03_interfaces(card: dict[str, Any], agent: Agent) -> None:
    url, transport = _endpoint(agent)
    if "supportedInterfaces" in card:  # a v1.0 source exported as v0.3
        interfaces = [i for i in card.pop("supportedInterfaces") or () if isinstance(i, Mapping)]
        card["protocolVersion"] = PROTOCOL_03
        card["preferredTransport"] = transport
        if len(interfaces) > 1:
            card["additionalInterfaces"] = [{"url": url, "transport": transport}] + [
                {"url": i.get("url"), "transport": i.get("protocolBinding")} for i in interfaces[1:]
            ]
    old_url = card.get("url")
    card["url"] = url
    if "preferredTransport" in card or transport != DEFAULT_TRANSPORT:
        card["preferredTransport"] = transport
    extras = card.get("additionalInterfaces")
    if old_url != url and is_array(extras):  # the preferred interface is listed there too
        card["additionalInterfaces"] = [
            {**e, "url": url} if isinstance(e, Mapping) and e.get("url") == old_url else e for e in extras
        ]


def _write_v10_interfaces(card: dict[str, Any], agent: Agent) -> None:
    url, transport = _endpoint(agent)
    interfaces = card.get("supportedInterfaces")
    if is_array(interfaces) and interfaces and isinstance(interfaces[0], Mapping):
        card["supportedInterfaces"] = [{**interfaces[0], "url": url, "protocolBinding": transport}, *interfaces[1:]]
        return
    protocol = agent.labels.get(LABEL_PROTOCOL, "")
    preferred = {
        "url": url,
        "protocolBinding": transport,
        "protocolVersion": protocol if protocol.startswith("1.") else PROTOCOL_10,
    }
    others: list[dict[str, Any]] = []
    if "url" in card:  # a v0.3 source exported as v1.0: its additional interfaces follow the preferred one
        old = (card.pop("url"), card.pop("preferredTransport", DEFAULT_TRANSPORT))
        card.pop("protocolVersion", None)
        for extra in card.pop("additionalInterfaces", None) or ():
            if isinstance(extra, Mapping) and (extra.get("url"), extra.get("transport")) != old:
                others.append({"url": extra.get("url"), "protocolBinding": extra.get("transport")})
    card["supportedInterfaces"] = [preferred, *others]


def _write_skills(card: dict[str, Any], agent: Agent) -> None:
    sources = _source_skills(card.get("skills"))
    capabilities = in_source_order(agent.capabilities, sources)
    default_in = _write_default_modes(card, "defaultInputModes", [c.input_modes for c in capabilities])
    default_out = _write_default_modes(card, "defaultOutputModes", [c.output_modes for c in capabilities])
    card["skills"] = [_skill(c, sources.get(c.name), default_in, default_out) for c in capabilities]


def in_source_order(capabilities: Sequence[Capability], sources: Mapping[str, object]) -> list[Capability]:
    """The capabilities in the order their skills or tools had in the source document (the store keeps no
    order); those the source did not have come last, in the order given."""
    order = {name: index for index, name in enumerate(sources)}
    return sorted(capabilities, key=lambda c: order.get(c.name, len(order)))


def _write_default_modes(card: dict[str, Any], key: str, modes: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The card's default modes: the source's while every skill can still be said against them (a skill
    cannot say "no modes" under non-empty defaults), else the first capability's, or none."""
    current = optional(as_tokens, card.get(key), key, MAX_LIST_ITEMS, MAX_MODE_LEN)
    if current is not None and (not current or all(modes)):
        return current
    chosen = modes[0] if modes and all(modes) else ()
    card[key] = list(chosen)
    return chosen


def _source_skills(skills: object) -> dict[str, Mapping[str, Any]]:
    """The source's skills by the capability name each became."""
    found: dict[str, Mapping[str, Any]] = {}
    for skill in skills if is_array(skills) else ():
        if isinstance(skill, Mapping) and isinstance(skill.get("id"), str):
            name = optional(capability_name, skill["id"], "id")
            if name is not None:
                found.setdefault(name, skill)
    return found


def _skill(
    capability: Capability, source: Mapping[str, Any] | None, default_in: tuple[str, ...], default_out: tuple[str, ...]
) -> dict[str, Any]:
    skill: dict[str, Any] = copy.deepcopy(dict(source)) if source is not None else {"id": capability.name}
    title = skill.get("name")
    body = unheaded(capability.description, title if isinstance(title, str) and title != skill["id"] else None)
    if body is None:  # no human name heads the description (any more): the id stands in for it
        skill["name"], skill["description"] = skill["id"], capability.description
    else:
        skill["description"] = body
    if optional(as_tokens, skill.get("tags"), "tags", MAX_LIST_ITEMS, MAX_TAG_LEN) != capability.tags:
        skill["tags"] = list(capability.tags)
    examples = skill.get("examples")
    current = () if examples is None else optional(as_texts, examples, "examples", MAX_EXAMPLES, MAX_EXAMPLE_LEN)
    if current != capability.examples:
        if capability.examples:
            skill["examples"] = list(capability.examples)
        else:
            skill.pop("examples", None)
    for key, modes, default in (
        ("inputModes", capability.input_modes, default_in),
        ("outputModes", capability.output_modes, default_out),
    ):
        given = () if skill.get(key) is None else optional(as_tokens, skill[key], key, MAX_LIST_ITEMS, MAX_MODE_LEN)
        if given is not None and (given or default) == modes:
            continue
        if modes == default:
            skill.pop(key, None)
        else:
            skill[key] = list(modes)
    return skill
