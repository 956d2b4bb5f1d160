"""Limits: per-key rate limits with a retry hint, a cap on how long any call runs, message size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from capreg_client import CapregClient, CapregError

from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.transport.limits import RateLimited, RateLimiter
from tests.support import make_agent, make_capability, running_server


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_second=2, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("k")
    with pytest.raises(RateLimited) as err:
        limiter.take("k")
    assert err.value.retry_after_s == pytest.approx(0.5)
    limiter.take("other")  # buckets are per key
    now[0] = 0.5
    limiter.take("k")
    with pytest.raises(RateLimited):
        limiter.take("k")
    RateLimiter(per_second=0, burst=1).take("k")  # 0 means unlimited


def test_a_key_over_its_rate_gets_resource_exhausted_with_a_retry_hint(
    tmp_path: Path, database_url: str, embedder: SentenceTransformerEmbedder
) -> None:
    settings: dict[str, Any] = {"auth_enabled": True, "rate_limit_per_key": 0.5, "rate_burst_per_key": 3}
    with running_server(tmp_path / "d", database_url, embedder, **settings) as server:
        key = (tmp_path / "d" / "operator.key").read_text().strip()
        with CapregClient(server.target, api_key=key) as client:
            for _ in range(3):
                client.list_agents()
            with pytest.raises(CapregError) as err:
                client.list_agents()
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.retry_after_s is not None and 0 < err.value.retry_after_s <= 2
            assert client.health()  # health checks are not rate limited


def test_no_call_runs_past_the_servers_cap(
    tmp_path: Path, database_url: str, embedder: SentenceTransformerEmbedder
) -> None:
    with (
        running_server(tmp_path / "d", database_url, embedder, max_call_s=0.001) as server,
        CapregClient(server.target, timeout=30) as client,
    ):
        with pytest.raises(CapregError) as err:
            client.register_agent(make_agent("slow", make_capability("never-embedded-before-" * 5)))
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "at most 0.001 s" in err.value.message


def test_oversized_messages_are_refused(
    tmp_path: Path, database_url: str, embedder: SentenceTransformerEmbedder
) -> None:
    with (
        running_server(tmp_path / "d", database_url, embedder, max_message_bytes=64 * 1024) as server,
        CapregClient(server.target) as client,
    ):
        with pytest.raises(CapregError) as err:
            client.discover(vector=[0.1] * 40_000)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.health()
