"""`capreg models`: the embedding models this server can load, and distilling the static one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from registry.cli import output
from registry.cli.common import CONTEXT, fail, json_option

F = TypeVar("F", bound=Callable[..., Any])
STATIC_DEFAULT = "capreg/static-minilm-l6-v2-256"  # registry.embedding.models.STATIC_MINILM_NAME (imported lazily)


def _dir_options(func: F) -> F:
    func = click.option(
        "--models-dir",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="CAPREG_MODELS_DIR",
        help="Where distilled models are cached (default: <data-dir>/models).",
    )(func)
    func = click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path(".capreg"),
        show_default=True,
        envvar="CAPREG_DATA_DIR",
        help="The server's data directory; its models/ is the default --models-dir.",
    )(func)
    return func


@click.group(context_settings=CONTEXT)
def models() -> None:
    """The embedding models this server can load by name, and distilling the static one (offline)."""


@models.command("list", context_settings=CONTEXT)
@_dir_options
@click.option("--no-verify", is_flag=True, help="Only look for the files; skip the sha256 checks of a load.")
@json_option
def models_list(models_dir: Path | None, data_dir: Path, no_verify: bool, as_json: bool) -> None:
    """List the models: name, dimension, whether present (and loadable), where."""
    from registry.embedding.models import list_models, resolve_models_dir

    found = list_models(resolve_models_dir(models_dir, data_dir), verify=not no_verify)
    if as_json:
        output.print_json([info.to_dict() for info in found])
        return
    table = Table(title="Embedding models", title_justify="left")
    for column, justify in (("name", "left"), ("dim", "right"), ("kind", "left"), ("state", "left"), ("path", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "name")  # type: ignore[arg-type]
    for info in found:
        if not info.present:
            state = "[yellow]absent[/yellow]" + (" (`capreg models distill`)" if info.kind == "distilled" else "")
        elif info.problem:
            state = "[red]damaged[/red]"
        else:
            state = "[green]present[/green]" + (f" {info.identity[:12]}" if info.identity else "")
        table.add_row(info.name, str(info.dim), info.kind, state, str(info.path or "-"))
    output.console.print(table)
    for info in found:
        if info.problem:
            output.err_console.print(f"[red]{info.name}:[/red] {info.problem}", highlight=False)


@models.command("distill", context_settings=CONTEXT)
@click.argument("name", default=STATIC_DEFAULT)
@_dir_options
@click.option("--force", is_flag=True, help="Distil again even when a good copy is present.")
@json_option
def models_distill(name: str, models_dir: Path | None, data_dir: Path, force: bool, as_json: bool) -> None:
    """Distil NAME (default: the static model) from the bundled MiniLM into the models directory.

    Offline and deterministic; about 20 to 60 s of CPU. A present copy that passes its checks is kept
    (unless --force); a damaged one is rebuilt."""
    from registry.embedding.models import (
        UnknownModel,
        distill,
        list_models,
        resolve_models_dir,
        spec,
    )
    from registry.embedding.sentence import WeightsMismatch

    try:
        entry = spec(name)
    except UnknownModel as error:
        fail(str(error))
    where = resolve_models_dir(models_dir, data_dir)
    started = time.perf_counter()
    with Progress(
        TextColumn("distilling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output.err_console,
        disable=as_json,
        transient=True,
    ) as progress:
        task = progress.add_task("tokens", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            with _quiet_transformers():
                built = distill(name, where, report, force=force)
        except (WeightsMismatch, OSError, ValueError) as error:
            fail(str(error))
    seconds = time.perf_counter() - started
    info = next(i for i in list_models(where) if i.name == name)
    if as_json:
        output.print_json(info.to_dict() | {"distilled": built, "seconds": round(seconds, 2)})
    elif entry.kind == "bundled":
        click.echo(f"{name}: bundled with capreg ({info.path}); nothing to distil")
    elif built:
        identity = (info.identity or "")[:12]
        click.echo(f"{name}: distilled in {seconds:.1f} s into {info.path} (dim {info.dim}, identity {identity})")
    else:
        click.echo(f"{name}: already present and verified in {info.path} (identity {(info.identity or '')[:12]})")
    if info.problem:
        fail(info.problem)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The model loader's own progress bars would garble ours."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
