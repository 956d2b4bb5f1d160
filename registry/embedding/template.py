"""The text a capability is embedded as. The template is stored with its vector space, so changing it
is a rollout of a new space, never a silent change."""

from __future__ import annotations

import hashlib

from registry.domain.models import Agent, Capability

DEFAULT_TEMPLATE = "{name}: {description} Examples: {examples}"
TEMPLATE_FIELDS = ("name", "description", "examples", "tags", "agent_name", "agent_description")


MAX_TEMPLATE = 1000  # characters; a template is a line or two around the fields


def check_template(template: str) -> None:
    """Fail fast on a template with an unknown field, or one too long to be meant."""
    shown = template if len(template) <= 80 else f"{template[:80]}... ({len(template)} characters)"
    if len(template) > MAX_TEMPLATE:
        raise ValueError(f"capability template {shown!r} is longer than {MAX_TEMPLATE} characters")
    try:
        template.format_map(dict.fromkeys(TEMPLATE_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad capability template {shown!r}: fields are {TEMPLATE_FIELDS}") from exc


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
