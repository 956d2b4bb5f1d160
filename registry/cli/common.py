"""Helpers shared by every `capreg` command: client options, JSON output, errors that say what to do."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from capreg_client import CapregClient, CapregError

from registry.cli import output

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_KEY_FILE = Path(".capreg") / "operator.key"  # where `make run` writes the first operator key
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
    func = click.option(
        "--api-key",
        envvar="CAPREG_API_KEY",
        expose_value=False,
        callback=_remember,
        help="API key (capreg_...). Default: CAPREG_API_KEY, else --api-key-file.",
    )(func)
    func = click.option(
        "--api-key-file",
        envvar="CAPREG_API_KEY_FILE",
        type=click.Path(path_type=Path, dir_okay=False),
        expose_value=False,
        callback=_remember,
        help=f"File holding the API key. Default: {DEFAULT_KEY_FILE} when it exists (written by `make run`).",
    )(func)
    for flag, envvar, what in (
        ("--tls-ca", "CAPREG_TLS_CA", "CA certificate (PEM) to verify a TLS server; turns TLS on."),
        ("--tls-cert", "CAPREG_TLS_CERT", "Client certificate (PEM) for a server that requires mTLS."),
        ("--tls-key", "CAPREG_TLS_KEY", "Private key (PEM) of --tls-cert."),
    ):
        func = click.option(
            flag,
            envvar=envvar,
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            expose_value=False,
            callback=_remember,
            help=what,
        )(func)
    return func


def tls_options() -> dict[str, Any]:
    """Client keyword arguments for TLS from --tls-ca, --tls-cert and --tls-key."""
    meta = click.get_current_context().meta
    ca, cert, key = (meta.get(f"capreg.{name}") for name in ("tls_ca", "tls_cert", "tls_key"))
    if (cert is None) != (key is None):
        fail("--tls-cert and --tls-key go together")
    if not (ca or cert):
        return {}
    return {
        "tls": True,
        "root_certificates": Path(ca).read_bytes() if ca else None,
        "certificate_chain": Path(cert).read_bytes() if cert else None,
        "private_key": Path(key).read_bytes() if key else None,
    }


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"capreg.{param.name}"] = value
    return value


def api_key() -> str | None:
    """The key to send: --api-key, else the key file, else none (a server without authentication)."""
    meta = click.get_current_context().meta
    if meta.get("capreg.api_key"):
        return str(meta["capreg.api_key"])
    path = meta.get("capreg.api_key_file") or (DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.is_file() else None)
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"cannot read the API key file {path}: {exc.strerror}")


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")(func)


def fail(message: str) -> NoReturn:
    output.err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def call(target: str, timeout: float, action: Callable[[CapregClient], Any]) -> Any:
    """Run `action` against the server, turning failures into messages that say what to do next."""
    with CapregClient(target, timeout=timeout, api_key=api_key(), **tls_options()) as client:
        try:
            return action(client)
        except CapregError as error:
            field = f" [field: {error.field}]" if error.field else ""
            fail(f"{error.code.name}: {error.message}{field}{hint_for(error.code.name, target)}")
    return None


def hint_for(code: str, target: str) -> str:
    """What to do next about a failure with this status code ("" when the message says it)."""
    if code == "UNAVAILABLE":
        return f" (is `capreg serve` running at {target}? start it, or pass --target)"
    if code == "UNAUTHENTICATED":
        return (
            " (pass --api-key, set CAPREG_API_KEY, or point --api-key-file at a key file; the server"
            " writes its first operator key to operator.key in its data directory)"
        )
    if code == "DEADLINE_EXCEEDED":
        return " (pass a larger --timeout)"
    return ""
