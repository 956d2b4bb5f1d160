"""`capreg keys ...` (create, list, revoke API keys) and `capreg audit` (who changed what, when)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
from capreg.v1 import keys_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, json_option

ROLES = ["agent", "orchestrator", "operator", "cluster-operator"]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `1d12h`, `90m`, `2w`: a positive duration."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise click.BadParameter(f"{text!r} is not a duration; write it like 30d, 12h, 1d12h or 90m (s, m, h, d, w)")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise click.BadParameter("must be longer than zero")
    return timedelta(seconds=seconds)


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    return None if value is None else parse_duration(value)


def _time(ts: Timestamp, present: bool) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if present else "-"


def keys_table(found: list[keys_pb2.ApiKey]) -> Table:
    table = Table()
    for column in ("id", "tenant", "name", "roles", "created", "expires", "revoked", "created_by"):
        table.add_column(column, no_wrap=column in ("id", "name"))
    for key in found:
        table.add_row(
            key.id,
            key.tenant,
            key.name,
            ", ".join(key.roles),
            _time(key.create_time, key.HasField("create_time")),
            _time(key.expire_time, True) if key.HasField("expire_time") else "never",
            _time(key.revoke_time, key.HasField("revoke_time")),
            key.created_by,
        )
    return table


def audit_table(entries: list[keys_pb2.AuditEntry]) -> Table:
    table = Table()
    for column in ("time", "tenant", "actor", "action", "entity", "entity_id"):
        table.add_column(column, no_wrap=column == "time")
    for entry in entries:
        table.add_row(
            _time(entry.time, entry.HasField("time")),
            entry.tenant,
            entry.actor,
            entry.action,
            entry.entity,
            entry.entity_id,
        )
    return table


@click.group(context_settings=CONTEXT)
def keys() -> None:
    """API keys: create (the token is shown once), list and revoke."""


@keys.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    help=f"Repeatable: {', '.join(ROLES)}; other names are roles that policies may refer to.",
)
@click.option("--tenant", default="", help="Tenant of the key (default: your key's tenant; '*' for cluster-operator).")
@click.option(
    "--expires-in",
    metavar="DURATION",
    callback=_duration_option,
    help="Expire after this long, e.g. 30d, 12h, 1d12h (default: never).",
)
@client_options
@json_option
def create_key(
    name: str,
    roles: tuple[str, ...],
    tenant: str,
    expires_in: timedelta | None,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Create an API key NAME and print its token, which is shown only this once."""
    expire_time = None
    if expires_in is not None:
        expire_time = Timestamp()
        expire_time.FromDatetime(datetime.now(UTC) + expires_in)
    response = call(target, timeout, lambda c: c.create_key(name, list(roles), tenant=tenant, expire_time=expire_time))
    output.err_console.print(
        "[bold yellow]This token is shown only now:[/] the server keeps only its hash. "
        "Store it somewhere safe; if it is lost, revoke the key and create another.",
        highlight=False,
    )
    if as_json:
        output.print_json({"key": output.to_dict(response.key), "token": response.token})
        return
    key = response.key
    expires = _time(key.expire_time, True) if key.HasField("expire_time") else "never"
    output.err_console.print(
        f"created key {key.id} ({key.tenant}/{key.name}, roles {', '.join(key.roles)}, expires {expires})",
        highlight=False,
    )
    click.echo(response.token)


@keys.command("list", context_settings=CONTEXT)
@click.option("--tenant", default="", help="Tenant (default: your key's; every tenant for a cluster operator).")
@client_options
@json_option
def list_keys(tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """List API keys (never their tokens)."""
    found = call(target, timeout, lambda c: c.list_keys(tenant))
    if as_json:
        output.print_json([output.to_dict(k) for k in found])
        return
    output.console.print(keys_table(found))
    click.echo(f"{len(found)} keys")


@keys.command("revoke", context_settings=CONTEXT)
@click.argument("key_id", metavar="ID")
@client_options
@json_option
def revoke_key(key_id: str, target: str, timeout: float, as_json: bool) -> None:
    """Revoke the key with this ID: every server refuses it from then on."""
    key = call(target, timeout, lambda c: c.revoke_key(key_id))
    if as_json:
        output.print_json(output.to_dict(key))
        return
    click.echo(f"key {key.id} ({key.tenant}/{key.name}): revoked at {_time(key.revoke_time, True)}")


@click.command(context_settings=CONTEXT)
@click.option("--tenant", default="", help="Tenant (default: your key's; every tenant for a cluster operator).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="Newest entries to show.")
@click.option("--before-id", default=0, type=click.IntRange(0), help="Only entries older than this id (paging).")
@client_options
@json_option
def audit(tenant: str, limit: int, before_id: int, target: str, timeout: float, as_json: bool) -> None:
    """Who changed what, and when: the audit log, newest first."""
    entries = call(target, timeout, lambda c: c.list_audit(tenant, limit=limit, before_id=before_id))
    if as_json:
        output.print_json([output.to_dict(e) for e in entries])
        return
    output.console.print(audit_table(entries))
    more = f"; older ones: --before-id {entries[-1].id}" if len(entries) == limit else ""
    click.echo(f"{len(entries)} entries{more}")
