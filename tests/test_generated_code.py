"""The committed protobuf stubs are exactly what proto/ generates, and field numbers stay put."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from capreg.v1 import agent_pb2, discovery_pb2, outcome_pb2, registry_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_stubs_match_the_proto_files() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wire_field_numbers_are_stable() -> None:
    """Renumbering a field breaks every deployed client; this pins the numbers of v1."""
    capability = {f.name: f.number for f in agent_pb2.Capability.DESCRIPTOR.fields}
    assert capability == {
        "id": 1, "name": 2, "version": 3, "description": 4, "examples": 5, "tags": 6, "input_modes": 7,
        "output_modes": 8, "cost": 9, "latency_p50_ms": 10, "quality_prior": 11, "regions": 12,
        "create_time": 13, "update_time": 14, "vector": 15,
    }  # fmt: skip
    agent = {f.name: f.number for f in agent_pb2.Agent.DESCRIPTOR.fields}
    assert agent == {
        "id": 1, "tenant": 2, "name": 3, "kind": 4, "endpoint": 5, "labels": 6, "status": 7, "description": 8,
        "capabilities": 9, "generation": 10, "create_time": 11, "update_time": 12, "visibility": 13,
        "shared_with": 14, "lease_ttl": 15, "lease_expire_time": 16,
    }  # fmt: skip
    request = {f.name: f.number for f in discovery_pb2.DiscoverRequest.DESCRIPTOR.fields}
    assert request == {
        "tenant": 1, "text": 2, "vector": 3, "top_k": 4, "filters": 5, "vector_space": 6,
        "estimated_input_tokens": 7, "estimated_output_tokens": 8, "task_labels": 9, "budget_id": 10,
        "min_seq": 11, "cost_preference": 12, "latency_preference": 13, "exploration_rate": 14,
    }  # fmt: skip
    watch = {f.name: f.number for f in discovery_pb2.WatchDiscoverRequest.DESCRIPTOR.fields}
    assert watch == {"discover": 1, "last_answer_digest": 2, "coalesce_ms": 3}
    watched = {f.name: f.number for f in discovery_pb2.WatchDiscoverResponse.DESCRIPTOR.fields}
    assert watched == {"answer": 1, "answer_digest": 2, "reasons": 3}
    response = {f.name: f.number for f in discovery_pb2.DiscoverResponse.DESCRIPTOR.fields}
    assert response == {"matches": 1, "explanation": 2, "vector_space": 3, "watermark": 4, "discover_id": 5}
    report = {f.name: f.number for f in outcome_pb2.ReportOutcomeRequest.DESCRIPTOR.fields}
    assert report == {
        "tenant": 1, "capability_id": 2, "discover_id": 3, "text": 4, "vector": 5, "success": 6, "score": 7,
        "latency_ms": 8, "input_tokens": 9, "output_tokens": 10, "cost_usd": 11, "vector_space": 12,
    }  # fmt: skip
    reported = {f.name: f.number for f in outcome_pb2.ReportOutcomeResponse.DESCRIPTOR.fields}
    assert reported == {"outcome_id": 1, "consistency_token": 2}
    heartbeat = {f.name: f.number for f in registry_pb2.HeartbeatRequest.DESCRIPTOR.fields}
    assert heartbeat == {"agent": 1, "lease_ttl": 2}
    beat = {f.name: f.number for f in registry_pb2.HeartbeatResponse.DESCRIPTOR.fields}
    assert beat == {"lease_expire_time": 1, "lease_ttl": 2, "consistency_token": 3}
