"""Agent manifests: the YAML or JSON files `capreg agents apply` and the demo catalog are written in.

A manifest is `{agents: [Agent, ...]}` using the proto field names, with kinds and statuses written
plainly (`kind: tool`, `status: draining`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from capreg.v1 import agent_pb2
from google.protobuf import json_format


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and the entry."""


def _enum(value: Any, prefix: str) -> Any:
    if isinstance(value, str) and not value.upper().startswith(prefix):
        return f"{prefix}{value.upper()}"
    return value


def agents_from_data(data: Any, source: str) -> list[agent_pb2.Agent]:
    if isinstance(data, dict) and "agents" in data:
        items = data["agents"]
    elif isinstance(data, dict):
        items = [data]  # a single agent
    else:
        items = data
    if not isinstance(items, list):
        raise ManifestError(f"{source}: expected a mapping with an 'agents' list")
    agents = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ManifestError(f"{source}: agents[{i}] is not a mapping")
        fields = dict(item)
        if "kind" in fields:
            fields["kind"] = _enum(fields["kind"], "AGENT_KIND_")
        if "status" in fields:
            fields["status"] = _enum(fields["status"], "AGENT_STATUS_")
        try:
            agents.append(json_format.ParseDict(fields, agent_pb2.Agent()))
        except json_format.ParseError as exc:
            raise ManifestError(f"{source}: agents[{i}] ({fields.get('name', '?')}): {exc}") from exc
    return agents


def load_agents(path: Path) -> list[agent_pb2.Agent]:
    """Agents from a .yaml, .yml or .json file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return agents_from_data(data, str(path))
