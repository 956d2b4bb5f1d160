"""Output for people (rich tables) and for scripts (--json)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from capreg.v1 import agent_pb2, discovery_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

# Piped output keeps whole rows on one line; a terminal gets its own width.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def kind_name(value: int) -> str:
    return agent_pb2.AgentKind.Name(value).removeprefix("AGENT_KIND_").lower()  # type: ignore[arg-type]


def status_name(value: int) -> str:
    return agent_pb2.AgentStatus.Name(value).removeprefix("AGENT_STATUS_").lower()  # type: ignore[arg-type]


def matches_table(response: discovery_pb2.DiscoverResponse, text: str) -> Table:
    table = Table(title=f"Discover: {text}", title_justify="left")
    for column, justify in (
        ("#", "right"),
        ("agent", "left"),
        ("capability", "left"),
        ("kind", "left"),
        ("similarity", "right"),
        ("score", "right"),
        ("est. cost (USD)", "right"),
        ("p50 (ms)", "right"),
        ("regions", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("agent", "capability"))  # type: ignore[arg-type]
    for i, match in enumerate(response.matches, 1):
        cap = match.capability
        table.add_row(
            str(i),
            match.agent_name,
            f"{cap.name} {cap.version}",
            kind_name(match.kind),
            f"{match.similarity:.3f}",
            f"{match.score:.3f}",
            f"{match.estimated_cost_usd:.4f}",
            f"{cap.latency_p50_ms:.0f}",
            _regions(cap.regions),
        )
    return table


def _regions(regions: Sequence[str]) -> str:
    if not regions:
        return "any"
    shown = ", ".join(regions[:2])
    return shown + (f" +{len(regions) - 2}" if len(regions) > 2 else "")


def explanation_table(response: discovery_pb2.DiscoverResponse) -> Table:
    exp = response.explanation
    table = Table(title="Explanation", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("vector space", response.vector_space)
    table.add_row("candidates", f"{exp.candidates_allowed} allowed of {exp.candidates_total}")
    for exclusion in exp.exclusions:
        table.add_row(f"excluded by {exclusion.reason}", str(exclusion.count))
    plan = exp.plan + (f" (ef={exp.hnsw_ef}, widenings={exp.hnsw_rounds})" if exp.plan == "hnsw" else "")
    table.add_row("plan", plan)
    table.add_row("timings (ms)", ", ".join(f"{t.stage} {t.ms:.2f}" for t in exp.timings))
    table.add_row("watermark", str(response.watermark))
    for i, match in enumerate(response.matches, 1):
        terms = " + ".join(f"{t.weight:.2f}*{t.name}({t.value:.3f})" for t in match.score_terms)
        table.add_row(f"score #{i}", f"{match.score:.3f} = {terms}")
    return table


def agents_table(agents: list[agent_pb2.Agent]) -> Table:
    table = Table()
    for column in ("tenant", "name", "kind", "status", "capabilities", "generation", "endpoint"):
        table.add_column(column)
    for agent in agents:
        caps = ", ".join(f"{c.name} {c.version}" for c in agent.capabilities)
        table.add_row(
            agent.tenant,
            agent.name,
            kind_name(agent.kind),
            status_name(agent.status),
            caps,
            str(agent.generation),
            agent.endpoint,
        )
    return table


def agent_detail(agent: agent_pb2.Agent) -> Table:
    table = Table(title=f"{agent.tenant}/{agent.name}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("id", agent.id)
    table.add_row("kind", kind_name(agent.kind))
    table.add_row("status", status_name(agent.status))
    table.add_row("endpoint", agent.endpoint)
    table.add_row("description", agent.description)
    table.add_row("labels", ", ".join(f"{k}={v}" for k, v in sorted(agent.labels.items())))
    table.add_row("generation", str(agent.generation))
    for cap in agent.capabilities:
        cost = cap.cost
        table.add_row(
            f"{cap.name} {cap.version}",
            f"{cap.description}\ncost ${cost.per_call_usd:g}/call + ${cost.per_1k_input_tokens_usd:g}/1k in "
            f"+ ${cost.per_1k_output_tokens_usd:g}/1k out; p50 {cap.latency_p50_ms:g} ms; "
            f"quality {cap.quality_prior:g}; regions {', '.join(cap.regions) or 'any'}; tags {', '.join(cap.tags)}",
        )
    return table
