"""The `capreg` command line: serve, migrate, manage agents, discover."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from capreg.v1 import discovery_pb2
from capreg_client import CapregClient, discover_request
from capreg_client.requests import kind_value
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from registry.cli import output
from registry.cli.apply import BatchFailed, register_in_batches
from registry.cli.budgets import budgets
from registry.cli.common import CONTEXT, call, client_options, fail, hint_for, json_option
from registry.cli.interop import agents_export, agents_import
from registry.cli.keys import audit, keys
from registry.cli.models import models
from registry.cli.outcomes import outcomes
from registry.cli.policies import policies
from registry.cli.status import status
from registry.cli.vectors import vectors
from registry.cli.watch import watch_answers
from registry.cli.workers import run_workers
from registry.logs import configure as configure_logging
from registry.manifest import ManifestError, load_agents


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="capreg")
def cli() -> None:
    """capreg: a capability registry for multi-agent systems.

    Agents register what they can do; orchestrators ask `discover` who should do a task.
    """


# -- serve and migrate -------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CAPREG_HOST", help="Address to listen on.")
@click.option(
    "--port",
    default=50051,
    show_default=True,
    envvar="CAPREG_PORT",
    type=click.IntRange(0, 65535),
    help="Port (0 picks a free one).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".capreg"),
    show_default=True,
    envvar="CAPREG_DATA_DIR",
    help="Directory for the embedded SQLite database and index files.",
)
@click.option(
    "--database-url",
    envvar="CAPREG_DATABASE_URL",
    help="SQLAlchemy URL of the database, e.g. postgresql://user@host/db (default: SQLite in --data-dir).",
)
@click.option("--demo", is_flag=True, help="Load the demo catalog into an empty registry.")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="CAPREG_TLS_CERT_FILE",
    help="Serve TLS with this certificate chain (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="CAPREG_TLS_KEY_FILE",
    help="Private key (PEM) of --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="CAPREG_TLS_CLIENT_CA_FILE",
    help="Require client certificates signed by this CA (mTLS).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Switch authentication off: every caller acts as a cluster operator. Local development only.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="json: one object per line with trace and span ids (env CAPREG_LOG_FORMAT; default text).",
)
@click.option(
    "--otel-exporter",
    type=click.Choice(["none", "console", "otlp"]),
    help="Where traces go (env CAPREG_OTEL_EXPORTER; otlp: to CAPREG_OTEL_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (env CAPREG_METRICS_PORT; 0: a free port).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the port (SO_REUSEPORT), each a replica with its own index; PostgreSQL only.",
)
def serve(
    host: str,
    port: int,
    data_dir: Path,
    database_url: str | None,
    demo: bool,
    log_level: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    insecure_no_auth: bool,
    log_format: str | None,
    otel_exporter: str | None,
    metrics_port: int | None,
    workers: int,
) -> None:
    """Serve the registry over gRPC until SIGTERM or Ctrl-C."""
    from registry.config import Settings
    from registry.domain.errors import DomainError

    overrides: dict[str, Any] = {"auth_enabled": False} if insecure_no_auth else {}
    for name, value in (("log_format", log_format), ("otel_exporter", otel_exporter), ("metrics_port", metrics_port)):
        if value is not None:
            overrides[name] = value
    settings = Settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_client_ca,
        **overrides,
    )
    configure_logging(log_level, settings.log_format)
    if workers > 1:
        if settings.is_embedded():
            fail("--workers needs a PostgreSQL database (--database-url): one process owns the embedded SQLite")
        # The database URL goes to the workers in their environment, never on a command line (`ps` shows those).
        os.environ["CAPREG_DATABASE_URL"] = settings.resolved_database_url()
        passed = {"--log-level": log_level, "--tls-cert": tls_cert,
                  "--tls-key": tls_key, "--tls-client-ca": tls_client_ca, "--log-format": log_format,
                  "--otel-exporter": otel_exporter}  # fmt: skip
        serve_args = [part for flag, value in passed.items() if value is not None for part in (flag, str(value))]
        serve_args += ["--demo"] * demo + ["--insecure-no-auth"] * insecure_no_auth
        sys.exit(run_workers(workers, host, port, data_dir, serve_args, metrics_port))
    try:
        settings.tls()
    except ValueError as error:
        fail(f"{error}: pass --tls-cert and --tls-key (and --tls-client-ca for mTLS)")
    try:
        asyncio.run(_serve(settings, demo))
    except DomainError as error:
        fail(error.message)


async def _serve(settings: Any, demo: bool) -> None:
    from registry.app import build_app

    output.err_console.print("loading the embedding model and building the index ...")
    app = await build_app(settings)
    if demo:
        added = await app.load_demo_if_empty()
        if added:
            output.err_console.print(f"loaded {added} demo agents")
    port = await app.start()
    output.err_console.print(
        f"[green]capreg serving[/green] on {settings.host}:{port} "
        f"({app.serving.index.live_count} capabilities, database {_redact(settings.resolved_database_url())})"
    )
    if not settings.auth_enabled:
        output.err_console.print("[bold red]WARNING: authentication is OFF; every caller is a cluster operator[/]")
    elif app.operator_key_file is not None:
        output.err_console.print(
            f"first start: a cluster-operator API key is in {app.operator_key_file} (readable by you only). "
            f"The CLI run from {Path.cwd()} uses it by itself when the data directory is .capreg; "
            f"elsewhere pass --api-key-file {app.operator_key_file}, or CAPREG_API_KEY=$(cat {app.operator_key_file})."
        )
    else:
        key_file = settings.data_dir / "operator.key"
        where = f" (the first one is in {key_file})" if key_file.exists() else ""
        output.err_console.print(f"clients authenticate with an API key{where}; `capreg keys create` makes more")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    output.err_console.print("shutting down: finishing in-flight calls ...")
    await app.stop()


def _redact(url: str) -> str:
    """Never print a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url
    return url


@cli.command(context_settings=CONTEXT)
@click.option("--to", "revision", default="head", show_default=True, help="Target revision: head, base or an id.")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path(".capreg"), show_default=True, envvar="CAPREG_DATA_DIR"
)
@click.option("--database-url", envvar="CAPREG_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in --data-dir).")
def migrate(revision: str, data_dir: Path, database_url: str | None) -> None:
    """Upgrade the database schema (or downgrade with --to REV)."""
    from registry.store import migrate as migrations
    from registry.store.engine import make_engine, sqlite_url

    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url or sqlite_url(data_dir))
    before = migrations.current_revision(engine)
    try:
        direction = migrations.migrate_to(engine, revision)
    except ValueError as error:
        fail(str(error))
    after = migrations.current_revision(engine)
    click.echo(f"{direction}: {before or 'empty'} -> {after or 'empty'} (head is {migrations.head_revision(engine)})")


# -- agents ------------------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def agents() -> None:
    """Register, list and inspect agents."""


@agents.command("apply", context_settings=CONTEXT)
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A YAML or JSON manifest: {agents: [...]}.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="Agents per RegisterAgents call: one transaction each, their texts embedded in shared model calls.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Batches in flight: the server embeds one while it stores another.",
)
@client_options
@json_option
def agents_apply(path: Path, batch_size: int, parallel: int, target: str, timeout: float, as_json: bool) -> None:
    """Register (create or update) every agent in a manifest, in batches (each all or nothing)."""
    try:
        manifest = load_agents(path)
    except ManifestError as error:
        fail(str(error))
    started = time.perf_counter()

    def register_all(client: CapregClient) -> list[Any]:
        with Progress(
            TextColumn("registering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=output.err_console,
            disable=as_json or len(manifest) < 2,
        ) as progress:
            task = progress.add_task("agents", total=len(manifest), rate="")
            done = 0

            def advanced(count: int) -> None:
                nonlocal done
                done += count
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=count, rate=f"{rate:.0f} agents/s")

            try:
                return register_in_batches(client, manifest, batch_size, parallel, advanced, timeout)
            except BatchFailed as error:
                fail(str(error) + hint_for(error.error.code.name, target))

    results = call(target, timeout, register_all)
    if as_json:
        output.print_json(
            [
                {
                    "name": r.agent.name,
                    "tenant": r.agent.tenant,
                    "created": r.created,
                    "changed": r.changed,
                    "generation": r.agent.generation,
                    "consistency_token": r.consistency_token,
                }
                for r in results
            ]
        )
        return
    if len(results) <= APPLY_LIST_AT_MOST:
        for r in results:
            verb = "created" if r.created else ("updated" if r.changed else "unchanged")
            click.echo(f"{r.agent.tenant}/{r.agent.name}: {verb} (generation {r.agent.generation})")
    created = sum(r.created for r in results)
    changed = sum(r.changed and not r.created for r in results)
    seconds = time.perf_counter() - started
    capabilities = sum(len(r.agent.capabilities) for r in results)
    click.echo(
        f"{len(results)} agents ({capabilities} capabilities): {created} created, {changed} updated, "
        f"{len(results) - created - changed} unchanged in {seconds:.1f} s"
    )


@agents.command("list", context_settings=CONTEXT)
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["model", "agent", "tool"]), help="Repeatable.")
@click.option("--status", type=click.Choice(["active", "draining", "inactive"]))
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Repeatable; all must match.")
@click.option("--prefix", default="", help="Names starting with this.")
@client_options
@json_option
def agents_list(
    tenant: str,
    kinds: tuple[str, ...],
    status: str | None,
    labels: tuple[str, ...],
    prefix: str,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """List agents (every page)."""
    found = call(
        target,
        timeout,
        lambda c: list(
            c.iter_agents(
                tenant=tenant,
                kinds=kinds,
                status=status,
                labels=_pairs(labels, "--label"),
                name_prefix=prefix,
                page_size=200,
            )
        ),
    )
    if as_json:
        output.print_json([output.to_dict(a) for a in found])
    else:
        output.console.print(output.agents_table(found))
        click.echo(f"{len(found)} agents")


@agents.command("get", context_settings=CONTEXT)
@click.argument("name")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
@json_option
def agents_get(name: str, tenant: str, target: str, timeout: float, as_json: bool) -> None:
    """Show one agent with its capabilities."""
    agent = call(target, timeout, lambda c: c.get_agent(name, tenant=tenant))
    if as_json:
        output.print_json(output.to_dict(agent))
    else:
        output.console.print(output.agent_detail(agent))


@agents.command("status", context_settings=CONTEXT)
@click.argument("name")
@click.argument("status", type=click.Choice(["active", "draining", "inactive"]))
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
def agents_status(name: str, status: str, tenant: str, target: str, timeout: float) -> None:
    """Set an agent's status; draining and inactive agents get no new Discover answers."""
    response = call(target, timeout, lambda c: c.update_agent_status(name, status, tenant=tenant))
    click.echo(f"{response.agent.tenant}/{response.agent.name}: {status} (generation {response.agent.generation})")


@agents.command("delete", context_settings=CONTEXT)
@click.argument("name")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@client_options
def agents_delete(name: str, tenant: str, target: str, timeout: float) -> None:
    """Deregister an agent and all its capabilities."""
    call(target, timeout, lambda c: c.deregister_agent(name, tenant=tenant))
    click.echo(f"{tenant or 'default'}/{name}: deregistered")


# -- discover ----------------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("text")
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["model", "agent", "tool"]), help="Repeatable.")
@click.option("--tag", "tags_all", multiple=True, help="Must carry this tag (repeatable: all).")
@click.option("--any-tag", "tags_any", multiple=True, help="Must carry one of these tags (repeatable).")
@click.option("--region", "regions", multiple=True, help="Must serve one of these regions (repeatable).")
@click.option("--input-mode", "input_modes", multiple=True, help="Must accept this input mode (repeatable).")
@click.option("--output-mode", "output_modes", multiple=True, help="Must produce this output mode (repeatable).")
@click.option("--max-cost", type=float, help="Most USD this call may cost, estimated from the token counts.")
@click.option("--max-latency", type=float, help="Highest acceptable p50 latency in ms.")
@click.option("--min-quality", type=float, help="Lowest acceptable quality prior in [0,1].")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Agent label (repeatable: all).")
@click.option("--input-tokens", type=int, help="Estimated input tokens (default 1000).")
@click.option("--output-tokens", type=int, help="Estimated output tokens (default 1000).")
@click.option(
    "--task-label",
    "task_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="What the task is, for policy conditions, e.g. data_class=pii (repeatable).",
)
@click.option("--budget", "budget_id", default="", help="Budget id: exclude what costs more than it has left.")
@click.option("--principal", default="", help="Who is asking, for policies.")
@click.option("--role", "roles", multiple=True, help="The caller's roles, for policies (repeatable).")
@click.option(
    "--cost-preference",
    type=click.FloatRange(0, 1),
    help="Weight of cheapness against quality: 0 (default) quality only, 1 cost only.",
)
@click.option(
    "--latency-preference",
    type=click.FloatRange(0, 1),
    help="Weight of speed, like --cost-preference (the two add up to at most 1).",
)
@click.option(
    "--explore",
    "exploration_rate",
    type=click.FloatRange(0, 1),
    help="Probability of putting the least-tried of the answer first, so new agents get tried.",
)
@click.option("--space", default="", help="Vector space to search (default: the serving one).")
@click.option("--explain", is_flag=True, help="Also show the plan, exclusions, timings and score terms.")
@click.option("--watch", is_flag=True, help="Keep watching: print a new answer whenever it changes (Ctrl-C stops).")
@click.option("--updates", type=click.IntRange(1), help="With --watch: stop after this many answers.")
@click.option("--coalesce-ms", type=click.IntRange(0, 10_000), default=0, help="With --watch: batch changes (100).")
@client_options
@json_option
def discover(
    text: str,
    top_k: int,
    tenant: str,
    kinds: tuple[str, ...],
    tags_all: tuple[str, ...],
    tags_any: tuple[str, ...],
    regions: tuple[str, ...],
    input_modes: tuple[str, ...],
    output_modes: tuple[str, ...],
    max_cost: float | None,
    max_latency: float | None,
    min_quality: float | None,
    labels: tuple[str, ...],
    input_tokens: int | None,
    output_tokens: int | None,
    task_labels: tuple[str, ...],
    budget_id: str,
    principal: str,
    roles: tuple[str, ...],
    cost_preference: float | None,
    latency_preference: float | None,
    exploration_rate: float | None,
    space: str,
    explain: bool,
    watch: bool,
    updates: int | None,
    coalesce_ms: int,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Find the agents best suited to TEXT."""
    filters = discovery_pb2.DiscoverFilters(
        kinds=[kind_value(k) for k in kinds],
        tags_all=tags_all,
        tags_any=tags_any,
        regions=regions,
        input_modes=input_modes,
        output_modes=output_modes,
        labels=_pairs(labels, "--label"),
        max_cost_usd=max_cost,
        max_latency_ms=max_latency,
        min_quality=min_quality,
    )
    question: dict[str, Any] = {
        "top_k": top_k,
        "tenant": tenant,
        "filters": filters,
        "estimated_input_tokens": input_tokens,
        "estimated_output_tokens": output_tokens,
        "task_labels": _pairs(task_labels, "--task-label"),
        "budget_id": budget_id,
        "cost_preference": cost_preference,
        "latency_preference": latency_preference,
        "exploration_rate": exploration_rate,
        "space": space,
    }
    if watch:
        request = discover_request(text, **question)
        call(target, timeout, lambda c: watch_answers(c, request, text, coalesce_ms, updates, explain, as_json))
        return
    response = call(target, timeout, lambda c: c.discover(text, principal=principal, roles=roles, **question))
    if as_json:
        output.print_json(output.to_dict(response))
        return
    if not response.matches:
        click.echo("no agent matches; loosen the filters (see --explain for what excluded them)")
    else:
        output.console.print(output.matches_table(response, text))
    if explain or not response.matches:
        output.console.print(output.explanation_table(response))


APPLY_LIST_AT_MOST = 50  # agents listed one per line by `agents apply`; larger manifests get the summary


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        pairs[key] = val
    return pairs


agents.add_command(agents_import)
agents.add_command(agents_export)
cli.add_command(policies)
cli.add_command(budgets)
cli.add_command(keys)
cli.add_command(audit)
cli.add_command(status)
cli.add_command(vectors)
cli.add_command(models)
cli.add_command(outcomes)


def main() -> None:
    cli(prog_name="capreg")


if __name__ == "__main__":
    main()
