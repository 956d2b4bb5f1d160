"""Helpers shared by every `capreg` command: client options, JSON output, errors that say what to do."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from capreg_client import CapregClient, CapregError

from registry.cli import output

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_TARGET = "127.0.0.1:50051"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def client_options(func: F) -> F:
    func = click.option(
        "--target",
        default=DEFAULT_TARGET,
        show_default=True,
        envvar="CAPREG_TARGET",
        help="Server address HOST:PORT.",
    )(func)
    func = click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for an answer.")(func)
    return func


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")(func)


def fail(message: str) -> NoReturn:
    output.err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def call(target: str, timeout: float, action: Callable[[CapregClient], Any]) -> Any:
    """Run `action` against the server, turning failures into messages that say what to do next."""
    with CapregClient(target, timeout=timeout) as client:
        try:
            return action(client)
        except CapregError as error:
            hint = ""
            if error.code.name == "UNAVAILABLE":
                hint = f" (is `capreg serve` running at {target}? start it, or pass --target)"
            field = f" [field: {error.field}]" if error.field else ""
            fail(f"{error.code.name}: {error.message}{field}{hint}")
    return None
