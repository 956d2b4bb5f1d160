"""Importing A2A Agent Cards and MCP server.json through the gRPC API, on SQLite and PostgreSQL: both card
shapes register an agent with one capability per skill that Discover finds; a changed card updates what
changed and removes skills that are gone; export gives back the card (what capreg does not model kept); a
malformed document is INVALID_ARGUMENT naming its JSON path and registers nothing; tenants stay apart."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from capreg_client import CapregClient, CapregError
from sqlalchemy import func, select

from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.store import tables as t
from tests.support import ServerThread, running_server

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
TENANT, OTHER = "interop", "elsewhere"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def server(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    with running_server(tmp_path / "data", database_url, embedder) as s:
        yield s


@pytest.fixture
def client(server: ServerThread) -> Iterator[CapregClient]:
    with CapregClient(server.target, timeout=30) as c:
        yield c


def counts(server: ServerThread) -> tuple[int, int, int, int]:
    with server.app.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (t.agents, t.capabilities, t.agent_documents, t.change_log)
        )


def test_a_v03_card_registers_an_agent_that_discover_finds(client: CapregClient) -> None:
    card = fixture("a2a_v03_card")
    answer = client.import_agent_card(card, tenant=TENANT)
    assert answer.created and answer.format == "a2a-0.3"
    agent = answer.agent
    assert agent.name == "currency-exchange-agent"
    assert agent.endpoint == card["url"]
    assert agent.labels["a2a.version"] == card["version"]
    assert agent.labels["provider.organization"] == card["provider"]["organization"]
    assert sorted(c.name for c in agent.capabilities) == sorted(s["id"] for s in card["skills"])
    assert sorted(answer.added) == sorted(f"{c.name}@{c.version}" for c in agent.capabilities)
    found = client.discover("convert 100 euros to japanese yen", tenant=TENANT, min_seq=answer.consistency_token)
    assert found.matches[0].agent_name == "currency-exchange-agent"
    assert found.matches[0].capability.name == "convert_currency"


def test_a_v10_card_and_its_export_round_trip(client: CapregClient) -> None:
    card = fixture("a2a_v10_card")
    answer = client.import_agent_card(json.dumps(card), tenant=TENANT)
    assert answer.format == "a2a-1.0"
    assert answer.agent.endpoint == card["supportedInterfaces"][0]["url"]
    exported = client.export_agent_card(answer.agent.name, tenant=TENANT)
    assert exported == card  # nothing changed since: the card as it came, security schemes and all
    again = client.import_agent_card(exported, tenant=TENANT)
    assert not again.changed and not (again.added or again.updated or again.removed)
    as_03 = client.export_agent_card(id=answer.agent.id, format="a2a-0.3")
    assert as_03["url"] == card["supportedInterfaces"][0]["url"] and "supportedInterfaces" not in as_03


def test_reimporting_a_changed_card_updates_and_removes(client: CapregClient, server: ServerThread) -> None:
    card = fixture("a2a_v03_card")
    first = client.import_agent_card(card, tenant=TENANT)
    changed = copy.deepcopy(card)
    gone = changed["skills"].pop()["id"]
    changed["skills"][0]["description"] = "Converts between any two of 170 currencies at live mid-market rates."
    answer = client.import_agent_card(changed, tenant=TENANT)
    assert answer.changed and not answer.created
    assert answer.removed == [f"{gone}@{first.agent.capabilities[0].version}"]
    assert answer.updated == [f"{changed['skills'][0]['id']}@{first.agent.capabilities[0].version}"]
    assert {c.name for c in answer.agent.capabilities} == {s["id"] for s in changed["skills"]}
    exported = client.export_agent_card(id=answer.agent.id)
    assert [s["id"] for s in exported["skills"]] == [s["id"] for s in changed["skills"]]
    assert exported["skills"][0]["description"] == changed["skills"][0]["description"]
    assert exported["securitySchemes"] == card["securitySchemes"]  # kept from the document


def test_an_mcp_server_with_a_tool_list_registers_each_tool(client: CapregClient) -> None:
    server_doc, tools = fixture("mcp_server_remote"), fixture("mcp_tools_list")
    answer = client.import_mcp_server(server_doc, tools=tools, tenant=TENANT, visibility="public")
    assert answer.format == "mcp-server"
    assert answer.agent.endpoint == server_doc["remotes"][0]["url"]
    assert sorted(c.name for c in answer.agent.capabilities) == sorted(tool["name"] for tool in tools["tools"])
    found = client.discover("will it rain in Lisbon tomorrow", tenant=OTHER, min_seq=answer.consistency_token)
    assert found.matches[0].agent_name == answer.agent.name  # public: another tenant finds it too
    exported = client.export_mcp_server(answer.agent.name, tenant=TENANT)
    assert exported["name"] == server_doc["name"] and exported["remotes"] == server_doc["remotes"]


def test_an_mcp_server_declaring_its_own_tools(client: CapregClient) -> None:
    server_doc = fixture("mcp_server_npm_tools")
    answer = client.import_mcp_server(server_doc, tenant=TENANT)
    assert answer.agent.endpoint.startswith("npm:")
    assert len(answer.agent.capabilities) >= 2
    assert client.export_mcp_server(id=answer.agent.id) == server_doc


def _without(document: dict[str, Any], *path: str | int) -> dict[str, Any]:
    broken = copy.deepcopy(document)
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return broken


@pytest.mark.parametrize(
    ("kind", "build", "field"),
    [
        ("card", lambda: "{not json", "card_json"),
        ("card", lambda: "[]", "card_json"),
        ("card", lambda: _without(fixture("a2a_v03_card"), "skills"), "card.skills"),
        ("card", lambda: _without(fixture("a2a_v03_card"), "skills", 1, "id"), "card.skills[1].id"),
        ("card", lambda: {**fixture("a2a_v10_card"), "url": "https://both.example.com"}, "card"),
        ("server", lambda: {**fixture("mcp_server_remote"), "name": "no-slash"}, "server.name"),
        ("server", lambda: _without(fixture("mcp_server_remote"), "remotes"), "server"),
        ("tools", lambda: {"tools": [{"description": "no name"}]}, "tools[0].name"),
        ("tools", lambda: '{"tools": 3}', "tools_json.tools"),
    ],
)
def test_a_malformed_document_names_its_json_path_and_registers_nothing(
    client: CapregClient, server: ServerThread, kind: str, build: Any, field: str
) -> None:
    before = counts(server)
    with pytest.raises(CapregError) as refused:
        if kind == "card":
            client.import_agent_card(build(), tenant=TENANT)
        elif kind == "server":
            client.import_mcp_server(build(), tenant=TENANT)
        else:
            client.import_mcp_server(fixture("mcp_server_remote"), tools=build(), tenant=TENANT)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == field, refused.value.message
    assert counts(server) == before


def test_another_tenant_can_neither_export_nor_see_a_private_import(client: CapregClient) -> None:
    answer = client.import_agent_card(fixture("a2a_v10_card"), tenant=TENANT)
    found = client.discover("plan a three-day trip to Kyoto", tenant=OTHER, min_seq=answer.consistency_token)
    assert answer.agent.name not in {m.agent_name for m in found.matches}
    with pytest.raises(CapregError) as refused:
        client.export_agent_card(answer.agent.name, tenant=OTHER)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


def test_an_agent_registered_without_a_document_exports_a_minimal_card(client: CapregClient) -> None:
    from tests.support import make_agent, make_capability

    client.register_agent(make_agent("plain", make_capability("summarize"), tenant=TENANT))
    card = client.export_agent_card("plain", tenant=TENANT)
    assert card["skills"][0]["id"] == "summarize" and "supportedInterfaces" in card
    reimported = client.import_agent_card(card, tenant=TENANT)
    assert reimported.agent.name == "plain"


def test_reimporting_without_options_keeps_who_it_is_shared_with(client: CapregClient) -> None:
    card = fixture("a2a_v10_card")
    client.import_agent_card(card, tenant=TENANT, visibility="shared", shared_with=[OTHER])
    again = client.import_agent_card({**card, "description": "Plans trips, now with ferries."}, tenant=TENANT)
    assert again.changed
    assert list(again.agent.shared_with) == [OTHER]
    found = client.discover("plan a three-day trip to Kyoto", tenant=OTHER, min_seq=again.consistency_token)
    assert again.agent.name in {m.agent_name for m in found.matches}
