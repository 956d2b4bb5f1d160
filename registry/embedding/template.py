"""The text a capability is embedded as. The template is stored with its vector space, so changing it
is a rollout of a new space, never a silent change."""

from __future__ import annotations

import hashlib

from registry.domain.models import Agent, Capability

DEFAULT_TEMPLATE = "{name}: {description} Examples: {examples}"
TEMPLATE_FIELDS = ("name", "description", "examples", "tags", "agent_name", "agent_description")


def check_template(template: str) -> None:
    """Fail fast on a template with an unknown field."""
    try:
        template.format_map(dict.fromkeys(TEMPLATE_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad capability template {template!r}: fields are {TEMPLATE_FIELDS}") from exc


def render(template: str, agent: Agent, capability: Capability) -> str:
    return template.format_map(
        {
            "name": capability.name,
            "description": capability.description,
            "examples": "; ".join(capability.examples),
            "tags": ", ".join(capability.tags),
            "agent_name": agent.name,
            "agent_description": agent.description,
        }
    ).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
