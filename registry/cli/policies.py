"""`capreg policies`: who may Discover what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml
from capreg.v1 import policy_pb2
from capreg_client import CapregClient, NotFoundError
from google.protobuf import json_format
from rich.table import Table

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, fail, json_option

ENUM_PREFIXES = {
    "effect": "POLICY_EFFECT_",
    "operator": "OPERATOR_",
    "kinds": "AGENT_KIND_",
    "default_effect": "POLICY_EFFECT_",
}


def _enums(value: Any, key: str = "") -> Any:
    """Lets manifests say `effect: deny`, `operator: NotIn`, `kinds: [tool]`."""
    if isinstance(value, dict):
        return {k: _enums(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_enums(v, key) for v in value]
    prefix = ENUM_PREFIXES.get(key)
    if prefix and isinstance(value, str) and not value.upper().startswith(prefix):
        plain = (
            "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(value)) if key == "operator" else value
        )
        return prefix + plain.replace("-", "_").upper()
    return value


def load_policies(path: Path) -> list[policy_pb2.Policy]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {path}: {exc}")
    items = data.get("policies", [data]) if isinstance(data, dict) else data
    if not isinstance(items, list):
        fail(f"{path}: expected a mapping with a 'policies' list")
    policies = []
    for i, item in enumerate(items):
        try:
            policies.append(json_format.ParseDict(_enums(item), policy_pb2.Policy()))
        except (json_format.ParseError, AttributeError) as exc:
            fail(f"{path}: policies[{i}]: {exc}")
    return policies


def _requirements(items: Any) -> str:
    ops = {1: "in", 2: "notin", 3: "exists", 4: "!exists"}
    return ", ".join(f"{r.key} {ops.get(r.operator, '?')} {'|'.join(r.values)}".strip() for r in items)


def policies_table(policies: list[policy_pb2.Policy]) -> Table:
    table = Table()
    for column in ("tenant", "name", "effect", "subject", "target", "when", "generation"):
        table.add_column(column)
    for p in policies:
        subject = (
            "everyone"
            if p.subject.everyone
            else ", ".join([*p.subject.principals, *(f"role:{r}" for r in p.subject.roles)])
        )
        t = p.target
        target = "; ".join(
            part
            for part in (
                f"agents {', '.join(t.agent_ids)}" if t.agent_ids else "",
                f"kinds {', '.join(output.kind_name(k) for k in t.kinds)}" if t.kinds else "",
                f"tags {', '.join(t.tags_any)}" if t.tags_any else "",
                f"labels {_requirements(t.labels)}" if t.labels else "",
                f"regions {', '.join(t.regions_any)}" if t.regions_any else "",
                f"outside {', '.join(t.regions_outside)}" if t.regions_outside else "",
            )
            if part
        )
        effect = policy_pb2.PolicyEffect.Name(p.effect).removeprefix("POLICY_EFFECT_").lower()
        when = _requirements(p.condition.task_labels) or "always"
        table.add_row(p.tenant, p.name, effect, subject, target or "everything", when, str(p.generation))
    return table


@click.group(context_settings=CONTEXT)
def policies() -> None:
    """Allow and deny rules: who may Discover which agents, for which tasks."""


@policies.command("apply", context_settings=CONTEXT)
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="YAML or JSON: {policies: [...]} with proto field names (effect: deny, operator: NotIn).",
)
@client_options
@json_option
def apply_policies(path: Path, target: str, timeout: float, as_json: bool) -> None:
    """Create the policies in a file, or update those that exist (by tenant and name)."""
    results = []

    def apply_all(client: CapregClient) -> None:
        for policy in load_policies(path):
            try:
                client.get_policy(policy.name, tenant=policy.tenant)
            except NotFoundError:
                results.append(("created", client.create_policy(policy).policy))
            else:
                results.append(("updated", client.update_policy(policy).policy))

    call(target, timeout, apply_all)
    if as_json:
        output.print_json([{"action": a, **output.to_dict(p)} for a, p in results])
        return
    for action, p in results:
        click.echo(f"{p.tenant}/{p.name}: {action} (generation {p.generation})")


@policies.command("list", context_settings=CONTEXT)
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def list_policies(tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """List a tenant's policies."""
    found = call(target, timeout, lambda c: c.list_policies(tenant))
    if as_json:
        output.print_json([output.to_dict(p) for p in found])
    else:
        output.console.print(policies_table(found))


@policies.command("get", context_settings=CONTEXT)
@click.argument("name")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def get_policy(name: str, tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """Show one policy."""
    policy = call(target, timeout, lambda c: c.get_policy(name, tenant=tenant))
    if as_json:
        output.print_json(output.to_dict(policy))
    else:
        output.console.print(policies_table([policy]))


@policies.command("delete", context_settings=CONTEXT)
@click.argument("name")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
def delete_policy(name: str, tenant: str, target: str, timeout: float) -> None:
    """Delete a policy."""
    call(target, timeout, lambda c: c.delete_policy(name, tenant=tenant))
    click.echo(f"{tenant or 'default'}/{name}: deleted")


@policies.command("default", context_settings=CONTEXT)
@click.argument("effect", type=click.Choice(["allow", "deny"]), required=False)
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
def default_effect(effect: str | None, tenant: str, target: str, timeout: float) -> None:
    """Show, or set, what applies when no policy allows or denies."""
    if effect is None:
        settings = call(target, timeout, lambda c: c.get_tenant_settings(tenant))
    else:
        settings = call(target, timeout, lambda c: c.set_default_effect(effect, tenant=tenant))
    name = policy_pb2.PolicyEffect.Name(settings.default_effect).removeprefix("POLICY_EFFECT_").lower()
    click.echo(f"{settings.tenant}: default effect {name}")
