"""`capreg outcomes report`: tell the registry how a capability did on a task, so later Discovers of
similar tasks learn from it (orchestrators do this through the API after every task)."""

from __future__ import annotations

import click

from registry.cli import output
from registry.cli.common import CONTEXT, call, client_options, json_option


@click.group(context_settings=CONTEXT)
def outcomes() -> None:
    """Outcomes: how capabilities did on tasks, which Discover learns from."""


@outcomes.command("report", context_settings=CONTEXT)
@click.argument("capability_id")
@click.option("--success/--failure", default=None, help="Whether the task succeeded.")
@click.option("--score", type=click.FloatRange(0, 1), help="A score in [0,1] instead of --success/--failure.")
@click.option("--discover-id", default="", help="The discover_id of the Discover that proposed it.")
@click.option("--text", help="The task's text (when there is no discover_id).")
@click.option("--space", default="", help="Vector space to embed --text in (default: the serving one).")
@click.option("--tenant", default="", help="Tenant (default: 'default').")
@click.option("--latency-ms", type=click.FloatRange(0), help="How long the task took.")
@click.option("--input-tokens", type=click.IntRange(0), help="Tokens read.")
@click.option("--output-tokens", type=click.IntRange(0), help="Tokens written.")
@click.option("--cost", "cost_usd", type=click.FloatRange(0), help="What the task cost, in USD.")
@client_options
@json_option
def report(
    capability_id: str,
    success: bool | None,
    score: float | None,
    discover_id: str,
    text: str | None,
    space: str,
    tenant: str,
    latency_ms: float | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cost_usd: float | None,
    target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Report how CAPABILITY_ID did on a task, named by --discover-id or --text."""
    if (success is None) == (score is None):
        raise click.UsageError("give exactly one of --success, --failure or --score")
    if not discover_id and text is None:
        raise click.UsageError("name the task: --discover-id (from `capreg discover --json`) or --text")
    response = call(
        target,
        timeout,
        lambda c: c.report_outcome(
            capability_id,
            success=success,
            score=score,
            discover_id=discover_id,
            text=text,
            space=space,
            tenant=tenant,
            latency_ms=latency_ms,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
        ),
    )
    if as_json:
        output.print_json(output.to_dict(response))
        return
    click.echo(f"recorded outcome {response.outcome_id} (consistency token {response.consistency_token})")
