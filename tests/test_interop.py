"""A2A Agent Cards and MCP server.json to capreg agents and back: the fixtures import to the agents they
describe, export gives back the document imported, and a malformed document is refused at the exact JSON
path at fault."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    validate_agent,
)
from registry.interop.a2a import ImportedAgent, agent_to_card, card_to_agent
from registry.interop.jsonpaths import MAX_TAG_LEN, MAX_TITLE
from registry.interop.mcp import PUBLISHER_META, SCHEMA_URL, agent_to_server, server_to_agent

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
V03 = "a2a_v03_card.json"
V10 = "a2a_v10_card.json"
REMOTE = "mcp_server_remote.json"
NPM = "mcp_server_npm_tools.json"
TOOLS_LIST = "mcp_tools_list.json"
META_TOOLS = f'server._meta["{PUBLISHER_META}"].tools'


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return document


def tools_list() -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = load(TOOLS_LIST)["tools"]
    return tools


def imported(name: str) -> ImportedAgent:
    document = load(name)
    if name.startswith("a2a"):
        result = card_to_agent(document, tenant="acme")
    else:
        result = server_to_agent(document, tools=None, tenant="acme")
    validate_agent(result.agent)
    return result


def exported(result: ImportedAgent) -> dict[str, Any]:
    if result.format == "mcp-server":
        return agent_to_server(result.agent, source=result.source)
    return agent_to_card(result.agent, source=result.source, format=result.format)


def reimported(document: Mapping[str, Any], format_: str) -> Agent:
    if format_ == "mcp-server":
        return server_to_agent(document, tools=None, tenant="acme").agent
    return card_to_agent(document, tenant="acme").agent


def capability(name: str) -> Callable[[Agent], Capability]:
    def pick(agent: Agent) -> Capability:
        return next(c for c in agent.capabilities if c.name == name)

    return pick


# --- A2A import -------------------------------------------------------------------------------------------


def test_v03_card_imports_to_its_agent() -> None:
    result = imported(V03)
    agent = result.agent
    assert result.format == "a2a-0.3"
    assert result.source == load(V03)
    assert (agent.tenant, agent.name, agent.kind) == ("acme", "currency-exchange-agent", AgentKind.AGENT)
    assert agent.endpoint == "https://fx.example.com/a2a/v1"
    assert agent.description.startswith("Converts amounts between currencies")
    assert agent.labels == {
        "a2a.version": "2.3.1",
        "a2a.protocol": "0.3.0",
        "a2a.transport": "JSONRPC",
        "provider.organization": "Example FX Ltd",
        "provider.url": "https://www.example.com",
    }
    both = ("text/plain", "application/json")
    assert agent.capabilities == (
        Capability(
            name="convert_currency",
            version="2.3.1",
            description="Currency conversion: Converts an amount from one currency to another at today's reference "
            "rate.",
            examples=("How much is 100 USD in EUR?", "Convert 2500 JPY to GBP"),
            tags=("currency", "conversion", "finance"),
            input_modes=both,
            output_modes=both,
        ),
        Capability(
            name="exchange_rate_history",
            version="2.3.1",
            description="Exchange rate history: Returns the daily exchange rate between two currencies over a date "
            "range.",
            examples=("EUR to CHF rates for March 2024",),
            tags=("currency", "exchange rates", "time series"),
            input_modes=both,
            output_modes=("application/json", "text/csv"),
        ),
        Capability(
            name="rate-alert",  # its name is its id: nothing to put in front of the description
            version="2.3.1",
            description="Notifies the caller when an exchange rate crosses a threshold.",
            tags=("currency", "alerts"),
            input_modes=("application/json",),
            output_modes=both,
        ),
    )


def test_v10_card_imports_to_its_agent() -> None:
    result = imported(V10)
    agent = result.agent
    assert result.format == "a2a-1.0"
    assert (agent.name, agent.kind, agent.endpoint) == (
        "trip-planner",
        AgentKind.AGENT,
        "https://agents.example.org/trips",
    )
    assert agent.labels == {
        "a2a.version": "1.4.0",
        "a2a.protocol": "1.0",
        "a2a.transport": "JSONRPC",
        "provider.organization": "Example Travel",
        "provider.url": "https://travel.example.org",
    }
    route, itinerary = agent.capabilities
    assert route == Capability(
        name="route-planner",
        version="1.4.0",
        description="Route planning: Finds train, flight and bus connections between two cities on a given date.",
        examples=("Fastest way from Zurich to Vienna on 3 May", "Night trains from Berlin to Paris"),
        tags=("travel", "routes", "transport"),
        input_modes=("text/plain",),
        output_modes=("text/plain", "application/json"),
    )
    assert (itinerary.name, itinerary.examples) == ("itinerary", ())
    assert itinerary.description.startswith("Itinerary builder: Builds a day-by-day itinerary")
    assert (itinerary.input_modes, itinerary.output_modes) == (
        ("text/plain", "application/json"),
        ("application/json",),
    )


@pytest.mark.parametrize(
    ("card_name", "agent_name"),
    [
        ("Currency Exchange Agent", "currency-exchange-agent"),
        ("Café Bot 2.0", "cafe-bot-2-0"),
        ("  Travel -- Planner!  ", "travel-planner"),
        ("snake_case_agent", "snake_case_agent"),
    ],
)
def test_agent_names_come_from_the_card_name(card_name: str, agent_name: str) -> None:
    card = load(V03)
    card["name"] = card_name
    assert card_to_agent(card, tenant="acme").agent.name == agent_name


@pytest.mark.parametrize(
    ("skill_id", "capability_name"),
    [
        ("convert_currency", "convert_currency"),
        ("get rates!", "get-rates"),
        ("_ping", "ping"),
        ("Über-Skill", "Uber-Skill"),
    ],
)
def test_capability_names_come_from_skill_ids(skill_id: str, capability_name: str) -> None:
    card = load(V03)
    card["skills"][0]["id"] = skill_id
    assert card_to_agent(card, tenant="acme").agent.capabilities[0].name == capability_name


def test_a_loose_version_is_padded_and_exported_as_written() -> None:
    card = load(V10)
    card["version"] = "v1.4"
    result = card_to_agent(card, tenant="acme")
    assert {c.version for c in result.agent.capabilities} == {"1.4.0"}
    assert result.agent.labels["a2a.version"] == "v1.4"
    assert exported(result) == card


def test_tags_and_modes_are_trimmed_to_valid_tokens() -> None:
    card = load(V03)
    card["skills"][1]["tags"] = ["  exchange \t rates ", "fx"]
    card["skills"][1]["outputModes"] = [" text/csv "]
    cap = card_to_agent(card, tenant="acme").agent.capabilities[1]
    assert (cap.tags, cap.output_modes) == (("exchange rates", "fx"), ("text/csv",))


def test_null_optional_fields_count_as_absent() -> None:
    card = load(V10)
    card["provider"] = None
    card["skills"][0]["examples"] = None
    agent = card_to_agent(card, tenant="acme").agent
    assert "provider.organization" not in agent.labels
    assert agent.capabilities[0].examples == ()


# --- A2A export -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [V03, V10, REMOTE, NPM])
def test_an_unchanged_agent_exports_the_document_it_came_from(name: str) -> None:
    result = imported(name)
    document = exported(result)
    assert document == load(name)
    assert reimported(document, result.format) == result.agent


@pytest.mark.parametrize("name", [V03, V10, REMOTE, NPM])
def test_without_a_source_export_builds_a_document_that_imports_to_the_same_agent(name: str) -> None:
    result = imported(name)
    if result.format == "mcp-server":
        document = agent_to_server(result.agent, source=None)
        assert document["$schema"] == SCHEMA_URL
    else:
        document = agent_to_card(result.agent, source=None, format=result.format)
        assert "securitySchemes" not in document
    assert reimported(document, result.format) == result.agent


def test_export_reflects_what_changed_through_capreg() -> None:
    result = imported(V03)
    convert, history, _alert = result.agent.capabilities
    agent = replace(
        result.agent,
        endpoint="https://fx2.example.com/a2a",
        description="Currency conversion and rates.",
        capabilities=(
            replace(convert, description="Currency conversion: Converts at live rates.", tags=("fx",)),
            replace(history, description="Daily rates between two currencies.", examples=()),
            Capability(
                name="news",
                version="2.3.1",
                description="Currency news.",
                tags=("news",),
                input_modes=convert.input_modes,
                output_modes=convert.output_modes,
            ),
        ),
    )
    validate_agent(agent)
    card = agent_to_card(agent, source=result.source, format="a2a-0.3")
    source = load(V03)
    assert card["description"] == "Currency conversion and rates."
    assert card["url"] == "https://fx2.example.com/a2a"
    assert card["additionalInterfaces"][0] == {"url": "https://fx2.example.com/a2a", "transport": "JSONRPC"}
    assert card["additionalInterfaces"][1:] == source["additionalInterfaces"][1:]
    assert (card["securitySchemes"], card["signatures"]) == (source["securitySchemes"], source["signatures"])
    assert card["skills"] == [
        {**source["skills"][0], "description": "Converts at live rates.", "tags": ["fx"]},
        # The human name no longer heads the description, so the id stands in for it.
        {
            "id": "exchange_rate_history",
            "name": "exchange_rate_history",
            "description": "Daily rates between two currencies.",
            "tags": ["currency", "exchange rates", "time series"],
            "outputModes": ["application/json", "text/csv"],
        },
        {"id": "news", "name": "news", "description": "Currency news.", "tags": ["news"]},
    ]
    assert card_to_agent(card, tenant="acme").agent == agent


def test_a_card_exports_in_the_other_shape() -> None:
    v03 = imported(V03)
    card = agent_to_card(v03.agent, source=v03.source, format="a2a-1.0")
    assert "url" not in card and "additionalInterfaces" not in card and "protocolVersion" not in card
    assert card["supportedInterfaces"] == [
        {"url": "https://fx.example.com/a2a/v1", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
        {"url": "https://fx.example.com/a2a/grpc", "protocolBinding": "GRPC"},
        {"url": "https://fx.example.com/a2a/rest", "protocolBinding": "HTTP+JSON"},
    ]
    again = card_to_agent(card, tenant="acme")
    assert again.format == "a2a-1.0"
    assert again.agent == replace(v03.agent, labels={**v03.agent.labels, "a2a.protocol": "1.0"})

    v10 = imported(V10)
    card = agent_to_card(v10.agent, source=v10.source, format="a2a-0.3")
    assert "supportedInterfaces" not in card
    assert (card["url"], card["preferredTransport"], card["protocolVersion"]) == (
        "https://agents.example.org/trips",
        "JSONRPC",
        "0.3.0",
    )
    assert card["additionalInterfaces"][1] == {"url": "grpc://agents.example.org:443", "transport": "GRPC"}
    assert card_to_agent(card, tenant="acme").agent == replace(
        v10.agent, labels={**v10.agent.labels, "a2a.protocol": "0.3.0"}
    )


def test_export_refuses_an_unknown_format_and_an_agent_without_endpoint() -> None:
    agent = imported(V03).agent
    with pytest.raises(InvalidArgument) as error:
        agent_to_card(agent, source=None, format="a2a-2.0")
    assert error.value.field == "format"
    with pytest.raises(InvalidArgument) as error:
        agent_to_card(replace(agent, endpoint=""), source=None, format="a2a-0.3")
    assert error.value.field == "agent.endpoint"


slugs = st.from_regex(r"\A[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}\Z")
tokens = st.lists(st.from_regex(r"\A[a-z]{1,6}( [a-z]{1,6})?\Z"), max_size=3).map(tuple)
modes = st.lists(st.sampled_from(["text/plain", "application/json", "image/png"]), max_size=2, unique=True).map(tuple)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=60).filter(
    lambda t: bool(t.strip())
)


@st.composite
def agents(draw: st.DrawFn, protocol: str) -> Agent:
    """Valid agents in the terms an A2A card can say: one version, labels as import writes them."""
    version = draw(st.sampled_from(["1.0.0", "0.3.1", "2.0.0-rc.1"]))
    names = draw(st.lists(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,12}\Z"), min_size=1, max_size=4, unique=True))
    capabilities = tuple(
        Capability(
            name=name,
            version=version,
            description=draw(texts),
            examples=tuple(draw(st.lists(texts, max_size=2))),
            tags=draw(tokens),
            input_modes=draw(modes),
            output_modes=draw(modes),
        )
        for name in names
    )
    labels = {
        "a2a.version": version,
        "a2a.protocol": protocol,
        "a2a.transport": draw(st.sampled_from(["JSONRPC", "GRPC"])),
    }
    if draw(st.booleans()):
        labels |= {"provider.organization": "Example", "provider.url": "https://example.com"}
    return Agent(
        tenant="acme",
        name=draw(slugs),
        kind=AgentKind.AGENT,
        endpoint="https://agents.example.com/" + draw(slugs),
        labels=labels,
        description=draw(texts),
        capabilities=capabilities,
    )


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([("a2a-0.3", "0.3.0"), ("a2a-1.0", "1.0")]).flatmap(
        lambda f: st.tuples(st.just(f[0]), agents(f[1]))
    )
)
def test_any_valid_agent_survives_an_export_and_an_import(case: tuple[str, Agent]) -> None:
    format_, agent = case
    validate_agent(agent)
    card = agent_to_card(agent, source=None, format=format_)
    assert card_to_agent(card, tenant="acme").agent == agent
    assert agent_to_card(agent, source=card, format=format_) == card


# --- MCP --------------------------------------------------------------------------------------------------


def test_a_server_with_a_remote_and_no_tools_is_one_capability() -> None:
    result = imported(REMOTE)
    agent = result.agent
    assert (result.format, agent.kind, agent.name) == ("mcp-server", AgentKind.TOOL, "io-github-acme-weather")
    assert agent.endpoint == "https://mcp.weather.acme.example/mcp"
    assert agent.description == "Acme Weather: Current conditions and forecasts for any city."
    assert agent.labels == {
        "mcp.name": "io.github.acme/weather",
        "mcp.version": "1.2.0",
        "mcp.transport": "streamable-http",
    }
    assert agent.capabilities == (Capability(name="weather", version="1.2.0", description=agent.description),)


def test_a_server_with_a_package_takes_its_tools_from_the_publisher_meta() -> None:
    agent = imported(NPM).agent
    assert (agent.name, agent.endpoint) == ("io-github-example-filesystem-tools", "npm:@example/mcp-filesystem@0.6.2")
    assert agent.labels == {
        "mcp.name": "io.github.example/filesystem-tools",
        "mcp.version": "0.6.2",
        "mcp.transport": "stdio",
        "mcp.registry_type": "npm",
    }
    json_in = ("application/json",)
    assert agent.capabilities == (
        Capability("read_file", "0.6.2", "Read file: Reads a text file and returns its contents.", input_modes=json_in),
        Capability(
            "search_files",
            "0.6.2",
            "Finds files whose names match a glob pattern under a directory.",
            input_modes=json_in,
            output_modes=json_in,  # it has an outputSchema
        ),
        Capability("write_file", "0.6.2", "Creates or overwrites a file with the given text.", input_modes=json_in),
    )


def test_a_tools_list_result_gives_the_capabilities_and_is_exported_under_the_meta_key() -> None:
    server = load(REMOTE)
    result = server_to_agent(server, tools=tools_list(), tenant="acme")
    validate_agent(result.agent)
    assert [c.name for c in result.agent.capabilities] == ["get_forecast", "get_conditions", "severe_alerts"]
    assert capability("get_forecast")(result.agent).description == (
        "Weather forecast: Forecast for a city for the next 1-7 days."
    )
    assert server == load(REMOTE)  # the caller's document is left alone
    document = agent_to_server(result.agent, source=result.source)
    assert document["_meta"][PUBLISHER_META]["tools"] == tools_list()
    assert {k: v for k, v in document.items() if k != "_meta"} == server
    assert server_to_agent(document, tools=None, tenant="acme").agent == result.agent


def test_an_empty_tools_list_leaves_the_server_as_one_capability() -> None:
    result = server_to_agent(load(REMOTE), tools=[], tenant="acme")
    assert result.agent == imported(REMOTE).agent
    assert result.source == load(REMOTE)


def test_a_package_reference_names_the_endpoint_without_remotes() -> None:
    server = load(NPM)
    del server["packages"][0]["version"]
    assert server_to_agent(server, tenant="acme").agent.endpoint == "npm:@example/mcp-filesystem"
    server["packages"].reverse()
    agent = server_to_agent(server, tenant="acme").agent
    assert (agent.endpoint, agent.labels["mcp.registry_type"]) == ("oci:example/mcp-filesystem@0.6.2", "oci")


def test_server_export_reflects_what_changed_through_capreg() -> None:
    result = imported(NPM)
    read, search, _write = result.agent.capabilities
    agent = replace(
        result.agent,
        description="Files, read-only.",
        endpoint="https://files.example.com/mcp",
        labels={**result.agent.labels, "mcp.transport": "streamable-http"},
        capabilities=(
            replace(read, description="Read file: Reads any file as text."),
            replace(search, output_modes=()),
        ),
    )
    server = agent_to_server(agent, source=result.source)
    source = load(NPM)
    assert (server["description"], server["packages"]) == ("Files, read-only.", source["packages"])
    assert server["remotes"] == [{"type": "streamable-http", "url": "https://files.example.com/mcp"}]
    tools = server["_meta"][PUBLISHER_META]["tools"]
    source_tools = source["_meta"][PUBLISHER_META]["tools"]
    assert tools[0] == {**source_tools[0], "description": "Reads any file as text."}
    assert tools[1] == {k: v for k, v in source_tools[1].items() if k != "outputSchema"}
    assert len(tools) == 2
    assert server_to_agent(server, tenant="acme").agent == agent


# --- refusals ---------------------------------------------------------------------------------------------


def _set(path: tuple[str | int, ...], value: object) -> Callable[[Any], None]:
    def edit(document: Any) -> None:
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value

    return edit


def _delete(*path: str | int) -> Callable[[Any], None]:
    def edit(document: Any) -> None:
        for key in path[:-1]:
            document = document[key]
        del document[path[-1]]

    return edit


def _both_shapes(card: Any) -> None:
    card["supportedInterfaces"] = [{"url": card["url"], "protocolBinding": "JSONRPC"}]


def _duplicate_skill(card: Any) -> None:
    card["skills"][2]["id"] = card["skills"][0]["id"]


def _colliding_skill(card: Any) -> None:
    card["skills"][0]["id"], card["skills"][1]["id"] = "get rates", "get-rates"


def _too_many_skills(card: Any) -> None:
    card["skills"] = [{**card["skills"][0], "id": f"s{i}"} for i in range(MAX_CAPABILITIES + 1)]


def _long_heading(card: Any) -> None:
    card["skills"][0]["name"] = "N" * MAX_TITLE
    card["skills"][0]["description"] = "d" * (MAX_DESCRIPTION - 100)


def _duplicate_tool(tools: Any) -> None:
    tools[2]["name"] = tools[0]["name"]


@dataclass(frozen=True)
class Bad:
    why: str
    fixture: str
    edit: Callable[[Any], None]
    field: str
    tools: bool = False  # edit the tools/list result, not the document


BAD = [
    Bad("missing skills", V03, _delete("skills"), "card.skills"),
    Bad("no skills", V10, _set(("skills",), []), "card.skills"),
    Bad("skills not a list", V10, _set(("skills",), {"id": "x"}), "card.skills"),
    Bad("skill without id", V03, _delete("skills", 1, "id"), "card.skills[1].id"),
    Bad("skill id a number", V03, _set(("skills", 1, "id"), 7), "card.skills[1].id"),
    Bad("skill without description", V10, _delete("skills", 0, "description"), "card.skills[0].description"),
    Bad("duplicate skill ids", V03, _duplicate_skill, "card.skills[2].id"),
    Bad("skill ids that make one name", V03, _colliding_skill, "card.skills[1].id"),
    Bad("too many skills", V03, _too_many_skills, "card.skills"),
    Bad("tags not a list", V03, _set(("skills", 0, "tags"), "currency"), "card.skills[0].tags"),
    Bad("missing tags", V10, _delete("skills", 1, "tags"), "card.skills[1].tags"),
    Bad("blank tag", V03, _set(("skills", 0, "tags", 1), " \t"), "card.skills[0].tags[1]"),
    Bad("control character in a tag", V03, _set(("skills", 0, "tags", 0), "a\x07b"), "card.skills[0].tags[0]"),
    Bad(
        "too many examples", V03, _set(("skills", 0, "examples"), ["e"] * (MAX_EXAMPLES + 1)), "card.skills[0].examples"
    ),
    Bad("name and description too long", V03, _long_heading, "card.skills[0].description"),
    Bad("both url and supportedInterfaces", V03, _both_shapes, "card"),
    Bad("neither url nor supportedInterfaces", V10, _delete("supportedInterfaces"), "card"),
    Bad("no interfaces", V10, _set(("supportedInterfaces",), []), "card.supportedInterfaces"),
    Bad(
        "interface without binding",
        V10,
        _delete("supportedInterfaces", 1, "protocolBinding"),
        "card.supportedInterfaces[1].protocolBinding",
    ),
    Bad(
        "additional interface without url",
        V03,
        _delete("additionalInterfaces", 2, "url"),
        "card.additionalInterfaces[2].url",
    ),
    Bad("version not semantic", V03, _set(("version",), "next"), "card.version"),
    Bad("name without ASCII letters", V03, _set(("name",), "日本語エージェント"), "card.name"),
    Bad("provider without url", V10, _delete("provider", "url"), "card.provider.url"),
    Bad("missing default input modes", V10, _delete("defaultInputModes"), "card.defaultInputModes"),
    Bad("neither packages nor remotes", REMOTE, _delete("remotes"), "server"),
    Bad("empty remotes", REMOTE, _set(("remotes",), []), "server"),
    Bad("name without slash", REMOTE, _set(("name",), "io.github.acme.weather"), "server.name"),
    Bad("name with two slashes", NPM, _set(("name",), "io.github/example/fs"), "server.name"),
    Bad(
        "unknown registry type", NPM, _set(("packages", 1, "registryType"), "cargo"), "server.packages[1].registryType"
    ),
    Bad(
        "unknown transport", NPM, _set(("packages", 0, "transport", "type"), "ws"), "server.packages[0].transport.type"
    ),
    Bad("package without transport", NPM, _delete("packages", 0, "transport"), "server.packages[0].transport"),
    Bad("remote without url", REMOTE, _delete("remotes", 1, "url"), "server.remotes[1].url"),
    Bad("version not semantic", REMOTE, _set(("version",), "2025-09-29"), "server.version"),
    Bad("meta tool without name", NPM, _delete("_meta", PUBLISHER_META, "tools", 0, "name"), f"{META_TOOLS}[0].name"),
    Bad("meta tools not a list", NPM, _set(("_meta", PUBLISHER_META, "tools"), {}), META_TOOLS),
    Bad("tool without name", REMOTE, _delete(1, "name"), "tools[1].name", tools=True),
    Bad("tool without description", REMOTE, _delete(1, "description"), "tools[1].description", tools=True),
    Bad("tool not an object", REMOTE, _set((0,), "get_forecast"), "tools[0]", tools=True),
    Bad("duplicate tool names", REMOTE, _duplicate_tool, "tools[2].name", tools=True),
    Bad("input schema not an object", REMOTE, _set((2, "inputSchema"), []), "tools[2].inputSchema", tools=True),
]


def _import(fixture: str, document: Any, tools: Any = None) -> ImportedAgent:
    if fixture.startswith("a2a"):
        return card_to_agent(document, tenant="acme")
    return server_to_agent(document, tools=tools, tenant="acme")


@pytest.mark.parametrize("bad", BAD, ids=[f"{b.fixture.split('.')[0]}: {b.why}" for b in BAD])
def test_a_malformed_document_is_refused_at_its_path(bad: Bad) -> None:
    document = load(bad.fixture)
    tools = tools_list() if bad.tools else None
    bad.edit(tools if bad.tools else document)
    with pytest.raises(InvalidArgument) as error:
        _import(bad.fixture, document, tools)
    assert error.value.field == bad.field
    assert str(error.value).startswith(f"{bad.field}: ")


def test_messages_say_what_is_wrong_and_what_is_expected() -> None:
    card = load(V03)
    card["skills"][1]["id"] = 7
    with pytest.raises(InvalidArgument, match=r"^card\.skills\[1\]\.id: must be a non-empty string, got a number$"):
        card_to_agent(card, tenant="acme")
    del card["skills"][1]["id"]
    with pytest.raises(InvalidArgument, match=r"^card\.skills\[1\]\.id: is missing; expected a non-empty string"):
        card_to_agent(card, tenant="acme")
    with pytest.raises(InvalidArgument, match=r"^card: must be an object, got an array$"):
        card_to_agent([], tenant="acme")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as error:
        card_to_agent(load(V03), tenant="Not A Tenant")
    assert error.value.field == "tenant"


# --- random mutations: each refused at the path it was made ----------------------------------------------


@dataclass(frozen=True)
class Str:
    required: bool = True
    max_len: int | None = None  # None: an enumeration, or no limit worth testing
    gone: str | None = None  # where deleting it is refused, when that is not its own path


@dataclass(frozen=True)
class Strs:
    max_items: int
    item_len: int
    required: bool = True


@dataclass(frozen=True)
class Obj:
    fields: Mapping[str, Spec] = field(default_factory=dict)
    required: bool = True


@dataclass(frozen=True)
class Objs:
    item: Obj
    max_items: int
    required: bool = True
    gone: str | None = None


Spec = Str | Strs | Obj | Objs

_MODES = Strs(MAX_LIST_ITEMS, MAX_MODE_LEN, required=False)
_SKILL = Obj(
    {
        "id": Str(max_len=128),
        "name": Str(max_len=MAX_TITLE),
        "description": Str(max_len=MAX_DESCRIPTION),
        "tags": Strs(MAX_LIST_ITEMS, MAX_TAG_LEN),
        "examples": Strs(MAX_EXAMPLES, MAX_EXAMPLE_LEN, required=False),
        "inputModes": _MODES,
        "outputModes": _MODES,
    }
)
_CARD: dict[str, Spec] = {
    "name": Str(max_len=128),
    "description": Str(max_len=MAX_DESCRIPTION),
    "version": Str(max_len=MAX_VERSION),
    "provider": Obj(
        {"organization": Str(max_len=MAX_LABEL_VALUE), "url": Str(max_len=MAX_LABEL_VALUE)}, required=False
    ),
    "defaultInputModes": Strs(MAX_LIST_ITEMS, MAX_MODE_LEN),
    "defaultOutputModes": Strs(MAX_LIST_ITEMS, MAX_MODE_LEN),
    "skills": Objs(_SKILL, MAX_CAPABILITIES),
}
CARD_V03 = Obj(
    {
        **_CARD,
        "url": Str(max_len=MAX_ENDPOINT, gone="card"),
        "preferredTransport": Str(required=False, max_len=MAX_LABEL_VALUE),
        "protocolVersion": Str(required=False, max_len=MAX_LABEL_VALUE),
        "additionalInterfaces": Objs(
            Obj({"url": Str(max_len=MAX_ENDPOINT), "transport": Str(max_len=MAX_LABEL_VALUE)}),
            MAX_LIST_ITEMS,
            required=False,
        ),
    }
)
CARD_V10 = Obj(
    {
        **_CARD,
        "supportedInterfaces": Objs(
            Obj(
                {
                    "url": Str(max_len=MAX_ENDPOINT),
                    "protocolBinding": Str(max_len=MAX_LABEL_VALUE),
                    "protocolVersion": Str(required=False, max_len=MAX_LABEL_VALUE),
                }
            ),
            MAX_LIST_ITEMS,
            gone="card",
        ),
    }
)
TOOLS = Objs(
    Obj(
        {
            "name": Str(max_len=128),
            "title": Str(required=False, max_len=MAX_TITLE),
            "description": Str(max_len=MAX_DESCRIPTION),
            "inputSchema": Obj(required=False),
            "outputSchema": Obj(required=False),
            "annotations": Obj(required=False),
        }
    ),
    MAX_CAPABILITIES,
)
SERVER = Obj(
    {
        "name": Str(max_len=200),
        "title": Str(required=False, max_len=MAX_TITLE),
        "description": Str(max_len=MAX_DESCRIPTION),
        "version": Str(max_len=MAX_VERSION),
        # Each fixture has only one of packages and remotes, so deleting it leaves the server without either.
        "packages": Objs(
            Obj(
                {
                    "registryType": Str(),
                    "identifier": Str(max_len=MAX_ENDPOINT),
                    "version": Str(required=False, max_len=MAX_VERSION),
                    "transport": Obj({"type": Str(), "url": Str(required=False, max_len=MAX_ENDPOINT)}),
                }
            ),
            MAX_LIST_ITEMS,
            required=False,
            gone="server",
        ),
        "remotes": Objs(
            Obj({"type": Str(), "url": Str(max_len=MAX_ENDPOINT)}), MAX_LIST_ITEMS, required=False, gone="server"
        ),
        "_meta": Obj({PUBLISHER_META: Obj({"tools": replace(TOOLS, required=False)}, required=False)}, required=False),
    }
)
CASES: dict[str, tuple[str, Spec, str]] = {  # fixture, its spec, its root path
    V03: (V03, CARD_V03, "card"),
    V10: (V10, CARD_V10, "card"),
    REMOTE: (REMOTE, SERVER, "server"),
    NPM: (NPM, SERVER, "server"),
    TOOLS_LIST: (TOOLS_LIST, TOOLS, "tools"),
}


@dataclass(frozen=True)
class Target:
    keys: tuple[str | int, ...]  # where it is in the document
    path: str  # the JSON path a refusal names
    spec: Spec | None  # None: an item of a Strs
    item_len: int = 0
    in_object: bool = True


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def targets(value: Any, spec: Spec, keys: tuple[str | int, ...], path: str) -> Iterator[Target]:
    """Every value of the document that `spec` describes, outermost first."""
    yield Target(keys, path, spec, in_object=bool(keys) and isinstance(keys[-1], str))
    if isinstance(spec, Obj):
        for key, member in spec.fields.items():
            if value.get(key) is not None:
                yield from targets(value[key], member, (*keys, key), _child(path, key))
    elif isinstance(spec, Objs):
        for i, each in enumerate(value):
            yield from targets(each, spec.item, (*keys, i), f"{path}[{i}]")
    elif isinstance(spec, Strs):
        for i in range(len(value)):
            yield Target((*keys, i), f"{path}[{i}]", None, item_len=spec.item_len, in_object=False)


NOT_STRINGS: st.SearchStrategy[object] = st.one_of(
    st.integers(), st.booleans(), st.floats(allow_nan=False), st.just([]), st.just({"a": 1})
)
NOT_ARRAYS: st.SearchStrategy[object] = st.one_of(
    st.integers(), st.booleans(), st.text(min_size=1, max_size=5), st.just({"a": 1})
)
NOT_OBJECTS: st.SearchStrategy[object] = st.one_of(
    st.integers(), st.booleans(), st.text(min_size=1, max_size=5), st.just([1])
)
BLANKS = st.sampled_from(["", " ", "\t\n"])


def long_text(limit: int) -> st.SearchStrategy[str]:
    return st.integers(limit + 1, limit + 40).flatmap(lambda n: st.text("abc", min_size=n, max_size=n))


def mutations(target: Target, value: Any) -> list[tuple[str, st.SearchStrategy[Any]]]:
    """(expected field, replacement strategy; None deletes) for each way to break `target`."""
    spec, path = target.spec, target.path
    found: list[tuple[str, st.SearchStrategy[Any]]] = []
    gone = getattr(spec, "gone", None)
    if target.in_object and spec is not None and (spec.required or gone):
        found.append((gone or path, st.none()))  # st.none(): delete the key
    if spec is None or isinstance(spec, Str):
        found += [(path, NOT_STRINGS), (path, BLANKS)]
        limit = target.item_len if spec is None else spec.max_len
        if limit is not None:
            found.append((path, long_text(limit)))
    elif isinstance(spec, Strs | Objs):
        found.append((path, NOT_ARRAYS))
        first = value[0] if value else "x"
        found.append((path, st.integers(spec.max_items + 1, spec.max_items + 3).map(lambda n: [first] * n)))
    else:
        found.append((path, NOT_OBJECTS))
    return found


def mutate(document: Any, keys: tuple[str | int, ...], replacement: Any) -> Any:
    if not keys:
        return replacement
    parent = document
    for key in keys[:-1]:
        parent = parent[key]
    if replacement is None:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = copy.deepcopy(replacement)
    return document


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_random_mutation_is_refused_at_the_path_it_was_made(data: st.DataObject) -> None:
    fixture, spec, root = CASES[data.draw(st.sampled_from(sorted(CASES)), label="fixture")]
    document: Any = load(fixture)["tools"] if fixture == TOOLS_LIST else load(fixture)
    target = data.draw(st.sampled_from(list(targets(document, spec, (), root))), label="target")
    value: Any = document
    for key in target.keys:
        value = value[key]
    expected, replacements = data.draw(st.sampled_from(mutations(target, value)), label="mutation")
    document = mutate(document, target.keys, data.draw(replacements, label="replacement"))
    with pytest.raises(InvalidArgument) as error:
        if fixture == TOOLS_LIST:
            server_to_agent(load(REMOTE), tools=document, tenant="acme")
        else:
            _import(fixture, document)
    assert error.value.field == expected
