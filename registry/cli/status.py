"""`capreg status`: where a server's index stands (watermark, lag, digest, start-up, snapshot)."""

from __future__ import annotations

import click
from capreg.v1 import admin_pb2
from rich.table import Table

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, json_option


@click.command(context_settings=CONTEXT)
@client_options
@json_option
def status(target: str, timeout: float, as_json: bool) -> None:
    """Show the server's index: change-log position and lag, size, digest, how it started, last snapshot.

    Replicas at the same watermark show the same digest; compare them to check that they agree."""
    found: admin_pb2.IndexStatus = call(target, timeout, lambda c: c.index_status())
    if as_json:
        output.print_json(output.to_dict(found) | {"lag": max(found.log_head - found.watermark, 0)})
        return
    table = Table(title=f"capreg at {target}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    lag = f" ({found.log_head - found.watermark} behind)" if found.log_head > found.watermark else " (caught up)"
    started = f"from {found.startup_source} in {found.startup_seconds:.2f} s"
    if found.startup_reason and found.startup_source == "database":
        started += f" ({found.startup_reason})"
    snapshot = "none yet"
    if found.snapshot_watermark:
        when = (
            found.snapshot_time.ToDatetime().isoformat(timespec="seconds") + "Z"
            if found.HasField("snapshot_time")
            else "loaded"
        )
        snapshot = f"at change {found.snapshot_watermark} ({when})"
    rows = [
        ("vector space", found.vector_space),
        ("ready", "yes" if found.ready else "no: still catching up with the change log"),
        ("watermark", f"{found.watermark}{lag if found.log_head else ''}"),
        ("log head", str(found.log_head) if found.log_head else "unknown (database unreachable)"),
        ("capabilities", str(found.capabilities)),
        ("digest", found.digest[:16]),
        ("started", started),
        ("snapshot", snapshot),
        ("changes applied", str(found.changes_applied)),
    ]
    if found.snapshot_error:
        rows.append(("snapshot error", f"[red]{found.snapshot_error}[/red]"))
    if found.follower_error:
        rows.append(("change log", f"[red]{found.follower_error}[/red]"))
    for what, value in rows:
        table.add_row(what, value)
    output.console.print(table)
