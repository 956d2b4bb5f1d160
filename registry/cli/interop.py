"""`capreg agents import FILE` and `capreg agents export NAME`: agents as A2A Agent Cards or MCP server.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, json_option

EXPORT_FORMATS = ["a2a-1.0", "a2a-0.3", "mcp"]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"{what} {path} is not JSON: {error}") from None


def detect_format(document: Any) -> str:
    """ "a2a" for an Agent Card, "mcp" for a server.json, from the keys each format requires."""
    if isinstance(document, dict):
        if "skills" in document or "supportedInterfaces" in document:
            return "a2a"
        if "packages" in document or "remotes" in document or "server.schema" in str(document.get("$schema", "")):
            return "mcp"
    raise click.UsageError("cannot tell whether this is an A2A Agent Card or an MCP server.json; pass --format")


@click.command("import", context_settings=CONTEXT)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "kind", type=click.Choice(["auto", "a2a", "mcp"]), default="auto", show_default=True)
@click.option("--tools", "tools_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="MCP only: a tools/list result (JSON) whose tools become the capabilities.")  # fmt: skip
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@click.option("--visibility", type=click.Choice(["private", "shared", "public"]), help="Default: private.")
@click.option("--share-with", "shared_with", multiple=True, help="Tenant that may see a shared agent (repeatable).")
@click.option("--lease-ttl", type=float, help="Seconds between heartbeats the agent promises (default: no lease).")
@client_options
@json_option
def agents_import(
    path: Path,
    kind: str,
    tools_path: Path | None,
    tenant: str,
    visibility: str | None,
    shared_with: tuple[str, ...],
    lease_ttl: float | None,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Register the agent an A2A Agent Card or MCP server.json at PATH describes (again: update it)."""
    document = _read_json(path, "the document")
    kind = detect_format(document) if kind == "auto" else kind
    options: dict[str, Any] = {
        "tenant": tenant,
        "visibility": visibility or "",
        "shared_with": shared_with,
        "lease_ttl_s": lease_ttl,
    }
    if kind == "a2a":
        if tools_path is not None:
            raise click.UsageError("--tools is for MCP server.json files")
        answer = call(target, timeout, lambda c: c.import_agent_card(document, **options))
    else:
        tools = _read_json(tools_path, "the tool list") if tools_path is not None else None
        answer = call(target, timeout, lambda c: c.import_mcp_server(document, tools=tools, **options))
    if as_json:
        output.print_json(output.to_dict(answer))
        return
    verb = "created" if answer.created else "updated" if answer.changed else "unchanged"
    click.echo(f"{answer.agent.tenant}/{answer.agent.name} ({answer.format}): {verb}")
    for label, names in (("added", answer.added), ("updated", answer.updated), ("removed", answer.removed)):
        if names:
            click.echo(f"  {label}: {', '.join(names)}")
    click.echo(f"  consistency token {answer.consistency_token}")


@click.command("export", context_settings=CONTEXT)
@click.argument("name")
@click.option("--format", "kind", type=click.Choice(EXPORT_FORMATS), help="Default: the format it was imported in.")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@client_options
def agents_export(name: str, kind: str | None, tenant: str, out: Path | None, target: str, timeout: float) -> None:
    """Print the agent NAME as an A2A Agent Card or MCP server.json (JSON)."""
    if kind == "mcp":
        document = call(target, timeout, lambda c: c.export_mcp_server(name, tenant=tenant))
    else:
        document = call(target, timeout, lambda c: c.export_agent_card(name, tenant=tenant, format=kind or ""))
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n")
        click.echo(f"wrote {out}")
