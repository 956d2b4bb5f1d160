"""`capreg vectors ...`: roll out a new embedding model or text template: create, backfill, compare,
shadow, promote, roll back, retire."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import click
from capreg.v1 import admin_pb2
from capreg_client import CapregClient
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, fail, json_option
from registry.embedding.template import DEFAULT_TEMPLATE

COMPARE_CHUNK = 500  # tasks per CompareSpaces call, so a large file stays under the message limit


def state_name(value: int) -> str:
    return admin_pb2.SpaceState.Name(value).removeprefix("SPACE_STATE_").lower()  # type: ignore[arg-type]


@click.group(context_settings=CONTEXT)
def vectors() -> None:
    """Vector spaces: roll out a new embedding model or template under live traffic, compare, promote,
    roll back.

    \b
    A rollout: create -> backfill -> compare (and/or shadow) -> promote; rollback if it disappoints;
    retire the old space when sure."""


@vectors.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option("--model", required=True, help="An embedding model by name (`capreg models list`).")
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True, help="The capability text template.")
@client_options
@json_option
def create(name: str, model: str, template: str, target: str, timeout: float, as_json: bool) -> None:
    """Create a vector space (state building); then `capreg vectors backfill NAME`."""
    space = call(target, timeout, lambda c: c.create_space(name, model, template))
    _show(space, as_json)


@vectors.command("list", context_settings=CONTEXT)
@client_options
@json_option
def list_(target: str, timeout: float, as_json: bool) -> None:
    """Every vector space with its state, model, dimension and how much of the catalog it covers."""
    spaces = call(target, timeout, lambda c: c.list_spaces())
    if as_json:
        output.print_json([output.to_dict(s) for s in spaces])
        return
    table = Table(title="Vector spaces", title_justify="left")
    for column in ("name", "state", "model", "dim", "embedded", "shadow", "live here", "previous"):
        table.add_column(column)
    for s in spaces:
        shadow = f"{s.shadow_fraction:.0%}" if s.shadow_fraction else ""
        if s.shadow.samples:
            shadow += f" (n={s.shadow.samples}, overlap {s.shadow.overlap_at_k:.2f}"
            if s.shadow.rank_correlation_tasks:
                shadow += f", rho {s.shadow.rank_correlation:.2f} over {s.shadow.rank_correlation_tasks}"
            shadow += ")"
        table.add_row(
            s.name,
            state_name(s.state),
            s.model,
            str(s.dim),
            f"{s.capabilities_embedded}/{s.capabilities_total}",
            shadow,
            "yes" if s.live_here else "no",
            s.previous_serving,
        )
    output.console.print(table)


@vectors.command("get", context_settings=CONTEXT)
@click.argument("name")
@client_options
@json_option
def get(name: str, target: str, timeout: float, as_json: bool) -> None:
    """One vector space in full."""
    _show(call(target, timeout, lambda c: c.get_space(name)), as_json)


@vectors.command("backfill", context_settings=CONTEXT)
@click.argument("name")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 1024))
@client_options
@json_option
def backfill(name: str, batch_size: int, target: str, timeout: float, as_json: bool) -> None:
    """Embed every capability the space lacks, with a progress bar. Safe to stop (Ctrl-C) and run again:
    it resumes where it stopped and never re-embeds a finished capability."""
    last: list[admin_pb2.BackfillProgress] = []

    def run(client: CapregClient) -> None:
        with Progress(
            TextColumn("embedding into {task.fields[space]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f}/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=output.err_console,
            disable=as_json,
        ) as progress:
            task = progress.add_task("backfill", total=None, space=name, rate=0.0)
            for step in client.backfill_space(name, batch_size=batch_size):
                progress.update(task, completed=step.done, total=step.total, rate=step.rate_per_s)
                last.append(step)

    call(target, timeout, run)
    final = last[-1] if last else None
    if as_json:
        output.print_json(output.to_dict(final) if final else {})
    elif final is not None:
        click.echo(f"{name}: {final.done} capabilities embedded; the space is {state_name(final.state)}")


def read_tasks(path: Path, text_column: str, expected_column: str, limit: int) -> Iterator[admin_pb2.CompareTask]:
    """Tasks from a CSV (text and optional expected columns), JSON lines ({"text", "expected"}), or text
    lines (one task each)."""
    count = 0
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                fail(f"{path} has no column {text_column!r}; name the task column with --text-column")
            for row in reader:
                expected = [row[expected_column]] if row.get(expected_column) else []
                yield admin_pb2.CompareTask(text=row[text_column], expected=expected)
                count += 1
                if count == limit:
                    return
            return
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                item = json.loads(line)
                wanted = item.get("expected", [])
                yield admin_pb2.CompareTask(text=item["text"], expected=[wanted] if isinstance(wanted, str) else wanted)
            else:
                yield admin_pb2.CompareTask(text=line)
            count += 1
            if count == limit:
                return


@vectors.command("compare", context_settings=CONTEXT)
@click.argument("old")
@click.argument("new")
@click.option(
    "--tasks",
    "tasks_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Tasks: .csv (see --text-column), .jsonl ({text, expected}) or one task per line.",
)
@click.option("--text-column", default="query", show_default=True, help="CSV column holding the task text.")
@click.option("--expected-column", default="tool", show_default=True, help="CSV column naming the right agent.")
@click.option("--limit", default=0, type=click.IntRange(0), help="Use at most this many tasks from the file.")
@click.option("--recent", default=0, type=click.IntRange(0, 10_000), help="Also this many recent Discover texts.")
@click.option("-k", default=5, show_default=True, type=click.IntRange(1, 100), help="Compare the top k.")
@click.option("--tenant", default="", help="Whose view Discover takes (default: 'default').")
@client_options
@json_option
def compare(
    old: str,
    new: str,
    tasks_path: Path | None,
    text_column: str,
    expected_column: str,
    limit: int,
    recent: int,
    k: int,
    tenant: str,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Run tasks through two spaces and compare: overlap@k, rank correlation and, for tasks with expected
    agents, each space's top-1 and top-5 accuracy."""
    tasks = list(read_tasks(tasks_path, text_column, expected_column, limit)) if tasks_path else []
    if not tasks and not recent:
        fail("give --tasks FILE and/or --recent N")
    chunks = [tasks[i : i + COMPARE_CHUNK] for i in range(0, len(tasks), COMPARE_CHUNK)] or [[]]
    reports: list[admin_pb2.CompareSpacesResponse] = []

    def run(client: CapregClient) -> None:
        with Progress(
            TextColumn("comparing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=output.err_console,
            disable=as_json or len(chunks) < 2,
        ) as progress:
            bar = progress.add_task("tasks", total=len(tasks))
            for i, chunk in enumerate(chunks):
                request = admin_pb2.CompareSpacesRequest(
                    old=old, new=new, tasks=chunk, k=k, tenant=tenant, recent=recent if i == 0 else 0
                )
                reports.append(client.compare_spaces(request, timeout=max(timeout, 600)))
                progress.advance(bar, len(chunk))

    call(target, timeout, run)
    total = sum(r.tasks for r in reports)
    labelled = sum(r.labelled for r in reports)

    def mean(field: str, weights: str) -> float:
        weight = sum(getattr(r, weights) for r in reports)
        return sum(_get(r, field) * getattr(r, weights) for r in reports) / weight if weight else 0.0

    summary = {
        "old": old,
        "new": new,
        "tasks": total,
        "labelled": labelled,
        "k": k,
        "overlap_at_k": mean("overlap_at_k", "tasks"),
        "rank_correlation": mean("rank_correlation", "rank_correlation_tasks"),
        "rank_correlation_tasks": sum(r.rank_correlation_tasks for r in reports),
        "old_top1": mean("old_accuracy.top1", "labelled"),
        "old_top5": mean("old_accuracy.top5", "labelled"),
        "new_top1": mean("new_accuracy.top1", "labelled"),
        "new_top5": mean("new_accuracy.top5", "labelled"),
    }
    if as_json:
        output.print_json(summary)
        return
    table = Table(title=f"{old} vs {new} over {total} tasks", title_justify="left")
    table.add_column("measure")
    table.add_column(old, justify="right")
    table.add_column(new, justify="right")
    table.add_row(f"overlap@{k}", f"{summary['overlap_at_k']:.3f}", "")
    table.add_row(
        f"rank correlation (one-sided Spearman, {summary['rank_correlation_tasks']} tasks)",
        f"{summary['rank_correlation']:.3f}",
        "",
    )
    if labelled:
        table.add_row(
            f"top-1 accuracy ({labelled} labelled)", f"{summary['old_top1']:.3f}", f"{summary['new_top1']:.3f}"
        )
        table.add_row("top-5 accuracy", f"{summary['old_top5']:.3f}", f"{summary['new_top5']:.3f}")
    output.console.print(table)


def _get(message: object, path: str) -> float:
    for part in path.split("."):
        message = getattr(message, part)
    assert isinstance(message, float)
    return message


@vectors.command("shadow", context_settings=CONTEXT)
@click.argument("name")
@click.argument("fraction", type=click.FloatRange(0, 1))
@client_options
@json_option
def shadow(name: str, fraction: float, target: str, timeout: float, as_json: bool) -> None:
    """Also run FRACTION (0 to 1) of live text Discovers against candidate NAME and record how its answers
    compare (`capreg vectors get NAME` shows it); callers' answers never change. 0 stops it."""
    _show(call(target, timeout, lambda c: c.set_shadow(name, fraction)), as_json)


@vectors.command("promote", context_settings=CONTEXT)
@click.argument("name")
@client_options
@json_option
def promote(name: str, target: str, timeout: float, as_json: bool) -> None:
    """Serve NAME from now on, atomically, on every server (within seconds, through the change log)."""
    _show(call(target, timeout, lambda c: c.promote_space(name)), as_json)


@vectors.command("rollback", context_settings=CONTEXT)
@client_options
@json_option
def rollback(target: str, timeout: float, as_json: bool) -> None:
    """Serve again the space that served before the current one."""
    _show(call(target, timeout, lambda c: c.rollback_space()), as_json)


@vectors.command("retire", context_settings=CONTEXT)
@click.argument("name")
@client_options
@json_option
def retire(name: str, target: str, timeout: float, as_json: bool) -> None:
    """Drop a space that does not serve; its vectors and indexes are freed. Cannot be undone."""
    _show(call(target, timeout, lambda c: c.retire_space(name)), as_json)


def _show(space: admin_pb2.Space, as_json: bool) -> None:
    if as_json:
        output.print_json(output.to_dict(space))
        return
    click.echo(
        f"{space.name}: {state_name(space.state)}, {space.model} (dim {space.dim}), "
        f"{space.capabilities_embedded}/{space.capabilities_total} capabilities embedded"
        + (f", rollback returns to {space.previous_serving}" if space.previous_serving else "")
    )
