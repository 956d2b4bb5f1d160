"""Leases: an agent that stops heartbeating leaves Discover when its lease runs out and is removed after
the grace period; Heartbeat and a KeepAlive stream keep it in; bad lease input changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from capreg.v1 import agent_pb2
from capreg_client import CapregClient, CapregError
from google.protobuf.duration_pb2 import Duration

from registry.embedding.sentence import SentenceTransformerEmbedder
from tests import support
from tests.support import ServerThread, make_agent, make_capability, running_server

TENANT = "leases"
VECTOR = support.unit(np.arange(1, 385, dtype=np.float32))


@pytest.fixture
def leased_server(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    with running_server(tmp_path / "data", database_url, embedder, lease_grace_s=3600, lease_sweep_s=0.05) as s:
        yield s


def leased_agent(name: str, ttl_s: float) -> agent_pb2.Agent:
    cap = make_capability("route", vector=agent_pb2.Vector(values=VECTOR.tolist()))
    seconds = int(ttl_s)
    return make_agent(name, cap, tenant=TENANT, lease_ttl=Duration(seconds=seconds, nanos=int((ttl_s - seconds) * 1e9)))


def found(client: CapregClient, name: str) -> bool:
    answer = client.discover(vector=VECTOR.tolist(), tenant=TENANT, top_k=10)
    return name in [m.agent_name for m in answer.matches]


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> float:
    """Poll `condition` until it holds; the wall-clock time it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)
    return time.time()


def test_an_agent_leaves_discover_when_its_lease_runs_out_and_a_heartbeat_brings_it_back(
    leased_server: ServerThread,
) -> None:
    with CapregClient(leased_server.target) as client:
        registered = client.register_agent(leased_agent("pulse", 1.0))
        expires = registered.agent.lease_expire_time.ToDatetime(tzinfo=UTC)
        assert registered.agent.lease_ttl.ToTimedelta().total_seconds() == 1.0
        assert found(client, "pulse")
        left_at = wait_until(lambda: not found(client, "pulse"))
        assert left_at >= expires.timestamp() - 0.05  # never before the lease ran out (same clock)
        beat = client.heartbeat("pulse", tenant=TENANT)
        assert beat.lease_expire_time.ToDatetime(tzinfo=UTC) > expires
        assert found(client, "pulse")  # the heartbeat answered after the index reflected it
        assert client.get_agent("pulse", tenant=TENANT).lease_expire_time == beat.lease_expire_time


def test_an_expired_agent_is_removed_after_the_grace_period(
    database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    with (
        running_server(tmp_path / "data", database_url, embedder, lease_grace_s=0.2, lease_sweep_s=0.05) as server,
        CapregClient(server.target) as client,
    ):
        client.register_agent(leased_agent("gone-soon", 1.0))
        client.register_agent(make_agent("no-lease", tenant=TENANT))

        def removed() -> bool:
            try:
                client.get_agent("gone-soon", tenant=TENANT)
            except CapregError as error:
                assert error.code.name == "NOT_FOUND"
                return True
            return False

        wait_until(removed)
        assert client.get_agent("no-lease", tenant=TENANT).name == "no-lease"  # never expires


def test_a_keepalive_stream_keeps_the_lease_until_it_closes(leased_server: ServerThread) -> None:
    with CapregClient(leased_server.target) as client:
        client.register_agent(leased_agent("streamer", 1.0))
        close = threading.Event()
        renewals = []
        for answer in client.keep_alive("streamer", tenant=TENANT, until=close):
            renewals.append(answer.lease_expire_time.ToDatetime(tzinfo=UTC))
            assert found(client, "streamer")
            if len(renewals) == 5:  # the server renewed by itself, every third of the 1 s TTL
                close.set()
        assert renewals == sorted(renewals) and renewals[-1] > renewals[0]
        assert (renewals[-1] - renewals[0]).total_seconds() >= 1.0  # longer than one TTL, still found
        wait_until(lambda: not found(client, "streamer"))


def test_registering_a_leased_agent_again_renews_its_lease(leased_server: ServerThread) -> None:
    with CapregClient(leased_server.target) as client:
        first = client.register_agent(leased_agent("again", 30.0))
        second = client.register_agent(leased_agent("again", 30.0))
        assert not second.changed and second.agent.generation == first.agent.generation
        assert second.agent.lease_expire_time.ToDatetime() > first.agent.lease_expire_time.ToDatetime()
        assert second.consistency_token > first.consistency_token
        removed = client.register_agent(leased_agent("again", 0))  # zero: no lease any more
        assert not removed.agent.HasField("lease_expire_time")


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (lambda c: c.register_agent(leased_agent("bad", 0.5)), "INVALID_ARGUMENT", "agent.lease_ttl"),
        (lambda c: c.register_agent(leased_agent("bad", -3)), "INVALID_ARGUMENT", "agent.lease_ttl"),
        (lambda c: c.register_agent(leased_agent("bad", 10**6)), "INVALID_ARGUMENT", "agent.lease_ttl"),
        (lambda c: c.heartbeat("plain", tenant=TENANT, lease_ttl_s=0.2), "INVALID_ARGUMENT", "lease_ttl"),
        (lambda c: c.heartbeat("plain", tenant=TENANT), "FAILED_PRECONDITION", ""),
        (lambda c: c.heartbeat("nobody", tenant=TENANT, lease_ttl_s=5), "NOT_FOUND", ""),
    ],
)
def test_bad_lease_input_is_refused_and_changes_nothing(
    leased_server: ServerThread, call: Callable[[CapregClient], object], code: str, field: str
) -> None:
    with CapregClient(leased_server.target) as client:
        plain = client.register_agent(make_agent("plain", tenant=TENANT))
        before = leased_server.app.store.watermark()
        with pytest.raises(CapregError) as refused:
            call(client)
        assert refused.value.code.name == code
        assert refused.value.field == field or not field
        assert leased_server.app.store.watermark() == before
        assert client.get_agent("plain", tenant=TENANT).generation == plain.agent.generation


def test_a_draining_agent_gets_no_new_discover_answers(leased_server: ServerThread) -> None:
    with CapregClient(leased_server.target) as client:
        client.register_agent(leased_agent("drainer", 60.0))
        assert found(client, "drainer")
        token = client.update_agent_status("drainer", "draining", tenant=TENANT).consistency_token
        assert token > 0 and not found(client, "drainer")
        assert client.heartbeat("drainer", tenant=TENANT).lease_expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
        assert not found(client, "drainer")  # alive, but draining
