"""`capreg budgets ...`: create, inspect and delete budgets; reserve, commit and release money."""

from __future__ import annotations

import uuid
from typing import Any

import click
from capreg.v1 import budget_pb2
from capreg_client import CapregClient
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, json_option

PERIODS = ["day", "month", "total"]
SCOPES = ["tenant", "principal", "project"]


def _ref(budget: str) -> tuple[str, str]:
    """A budget named on the command line, as (name, id): an id when it looks like one, a name otherwise."""
    try:
        uuid.UUID(budget)
    except ValueError:
        return budget, ""
    return "", budget


def _budget_id(client: CapregClient, budget: str, tenant: str) -> str:
    name, budget_id = _ref(budget)
    return budget_id or client.get_budget(name, tenant=tenant).id


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _time(ts: Timestamp, present: bool = True) -> str:
    if not present:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def budgets_table(budgets: list[budget_pb2.Budget]) -> Table:
    table = Table()
    for column, justify in (
        ("tenant", "left"),
        ("name", "left"),
        ("scope", "left"),
        ("period", "left"),
        ("limit (USD)", "right"),
        ("committed", "right"),
        ("reserved", "right"),
        ("remaining", "right"),
        ("id", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("name", "id"))  # type: ignore[arg-type]
    for b in budgets:
        scope = _enum_name(budget_pb2.BudgetScope, b.scope, "BUDGET_SCOPE_")
        table.add_row(
            b.tenant,
            b.name,
            f"{scope} {b.scope_id}".strip(),
            _enum_name(budget_pb2.BudgetPeriod, b.period, "BUDGET_PERIOD_"),
            f"{b.limit_usd:.2f}",
            f"{b.committed_usd:.6f}",
            f"{b.reserved_usd:.6f}",
            f"{b.remaining_usd:.6f}",
            b.id,
        )
    return table


def budget_detail(b: budget_pb2.Budget) -> Table:
    table = Table(title=f"{b.tenant}/{b.name}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    scope = _enum_name(budget_pb2.BudgetScope, b.scope, "BUDGET_SCOPE_")
    table.add_row("id", b.id)
    table.add_row("scope", f"{scope} {b.scope_id}".strip())
    table.add_row("period", _enum_name(budget_pb2.BudgetPeriod, b.period, "BUDGET_PERIOD_"))
    table.add_row("limit", f"${b.limit_usd:.6f}")
    table.add_row("this period", f"{_time(b.period_start)} to {_time(b.period_end, b.HasField('period_end'))}")
    table.add_row("committed", f"${b.committed_usd:.6f}")
    table.add_row("reserved", f"${b.reserved_usd:.6f}")
    table.add_row("remaining", f"${b.remaining_usd:.6f}")
    table.add_row("generation", str(b.generation))
    return table


def reservation_detail(r: budget_pb2.Reservation, b: budget_pb2.Budget | None = None) -> Table:
    table = Table(title=f"reservation {r.id}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("state", _enum_name(budget_pb2.ReservationState, r.state, "RESERVATION_STATE_"))
    table.add_row("amount", f"${r.amount_usd:.6f}")
    if r.HasField("actual_usd"):
        table.add_row("actual", f"${r.actual_usd:.6f}")
    table.add_row("expires at", _time(r.expires_at))
    table.add_row("budget", f"{b.tenant}/{b.name} ({r.budget_id})" if b is not None else r.budget_id)
    if b is not None:
        table.add_row("budget remaining", f"${b.remaining_usd:.6f} of ${b.limit_usd:.6f}")
    return table


@click.group(context_settings=CONTEXT)
def budgets() -> None:
    """Budgets: USD limits per day, month or in total; reserve, commit and release money against them."""


@budgets.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option("--limit", "limit_usd", required=True, type=float, help="Limit in USD per period.")
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True)
@click.option("--scope", type=click.Choice(SCOPES), default="tenant", show_default=True)
@click.option("--scope-id", default="", help="The principal or project (for --scope principal or project).")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_create(
    name: str,
    limit_usd: float,
    period: str,
    scope: str,
    scope_id: str,
    tenant: str,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Create a budget NAME."""
    response = call(
        target,
        timeout,
        lambda c: c.create_budget(name, limit_usd, period=period, scope=scope, scope_id=scope_id, tenant=tenant),
    )
    if as_json:
        output.print_json(output.to_dict(response))
        return
    output.console.print(budget_detail(response.budget))


@budgets.command("list", context_settings=CONTEXT)
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_list(tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """List a tenant's budgets with what their current period has used."""
    found = call(target, timeout, lambda c: c.list_budgets(tenant=tenant))
    if as_json:
        output.print_json([output.to_dict(b) for b in found])
        return
    output.console.print(budgets_table(found))
    click.echo(f"{len(found)} budgets")


@budgets.command("get", context_settings=CONTEXT)
@click.argument("budget")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_get(budget: str, tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """Show one budget (BUDGET is a name or an id)."""
    name, budget_id = _ref(budget)
    found = call(target, timeout, lambda c: c.get_budget(name, id=budget_id, tenant=tenant))
    if as_json:
        output.print_json(output.to_dict(found))
        return
    output.console.print(budget_detail(found))


@budgets.command("set-limit", context_settings=CONTEXT)
@click.argument("budget")
@click.argument("limit_usd", type=float)
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_set_limit(budget: str, limit_usd: float, tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """Change a budget's limit (BUDGET is a name or an id)."""
    name, budget_id = _ref(budget)
    response = call(target, timeout, lambda c: c.update_budget(limit_usd, name, id=budget_id, tenant=tenant))
    if as_json:
        output.print_json(output.to_dict(response))
        return
    output.console.print(budget_detail(response.budget))


@budgets.command("delete", context_settings=CONTEXT)
@click.argument("budget")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
def budgets_delete(budget: str, tenant: str, target: str, timeout: float) -> None:
    """Delete a budget with its usage and reservations (BUDGET is a name or an id)."""
    name, budget_id = _ref(budget)
    call(target, timeout, lambda c: c.delete_budget(name, id=budget_id, tenant=tenant))
    click.echo(f"{tenant or 'default'}/{budget}: deleted")


@budgets.command("reserve", context_settings=CONTEXT)
@click.argument("budget")
@click.argument("amount_usd", type=float)
@click.option("--ttl", "ttl_s", type=float, help="Seconds the hold lives unless committed or released (300).")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_reserve(
    budget: str, amount_usd: float, ttl_s: float | None, tenant: str, target: str, timeout: float, as_json: bool
) -> None:
    """Hold AMOUNT_USD in BUDGET (a name or an id) until committed, released or expired."""
    response = call(
        target,
        timeout,
        lambda c: c.reserve(_budget_id(c, budget, tenant), amount_usd, ttl_s=ttl_s, tenant=tenant),
    )
    if as_json:
        output.print_json(output.to_dict(response))
        return
    output.console.print(reservation_detail(response.reservation, response.budget))


@budgets.command("commit", context_settings=CONTEXT)
@click.argument("reservation_id")
@click.option("--actual", "actual_usd", type=float, help="USD actually spent (default: the held amount).")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_commit(
    reservation_id: str, actual_usd: float | None, tenant: str, target: str, timeout: float, as_json: bool
) -> None:
    """Settle a reservation with what was spent."""
    response = call(target, timeout, lambda c: c.commit(reservation_id, actual_usd, tenant=tenant))
    if as_json:
        output.print_json(output.to_dict(response))
        return
    output.console.print(reservation_detail(response.reservation, response.budget))


@budgets.command("release", context_settings=CONTEXT)
@click.argument("reservation_id")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def budgets_release(reservation_id: str, tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """Give a reservation's money back to its budget."""
    response = call(target, timeout, lambda c: c.release(reservation_id, tenant=tenant))
    if as_json:
        output.print_json(output.to_dict(response))
        return
    output.console.print(reservation_detail(response.reservation, response.budget))
