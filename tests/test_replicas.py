"""Replicas over one PostgreSQL follow the change log: a write on one, read with its token on another,
is always seen; without the token they converge; policies and keys travel the same way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from capreg.v1 import agent_pb2, policy_pb2
from capreg_client import CapregClient, CapregError

from registry.app import build_app
from registry.config import Settings
from registry.embedding.sentence import SentenceTransformerEmbedder
from tests import support
from tests.support import ServerThread, make_agent, make_capability, running_server

DIM = 384
T = TypeVar("T")
TENANT = "replicas"


@pytest.fixture
def replicas(pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[list[ServerThread]]:
    """Three servers on one database. Polling is off: only NOTIFY or a token moves a follower."""
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    with (
        running_server(tmp_path / "a", pg_database, embedder, change_poll_s=3600) as a,
        running_server(tmp_path / "b", pg_database, embedder, change_poll_s=3600) as b,
        running_server(tmp_path / "c", pg_database, embedder, change_poll_s=3600) as c,
    ):
        yield [a, b, c]


def vector_agent(name: str, vector: np.ndarray, **fields: object) -> agent_pb2.Agent:
    cap = make_capability("route", vector=agent_pb2.Vector(values=vector.tolist()))
    return make_agent(name, cap, tenant=TENANT, **fields)


def top_names(client: CapregClient, vector: np.ndarray, min_seq: int = 0, k: int = 1) -> list[str]:
    answer = client.discover(vector=vector.tolist(), tenant=TENANT, top_k=k, min_seq=min_seq)
    return [m.agent_name for m in answer.matches]


def test_a_write_on_one_replica_is_read_with_its_token_on_every_other(replicas: list[ServerThread]) -> None:
    rng = np.random.default_rng(5)
    clients = [CapregClient(r.target, timeout=30) for r in replicas]
    try:
        for i in range(30):
            writer, reader = clients[i % 3], clients[(i + 1) % 3]
            vector = support.unit(rng.standard_normal(DIM).astype(np.float32))
            written = writer.register_agent(vector_agent(f"agent-{i}", vector))
            assert top_names(reader, vector, min_seq=written.consistency_token) == [f"agent-{i}"]
            if i % 5 == 4:  # status changes and removals travel the same way
                drained = writer.update_agent_status(f"agent-{i}", "draining", tenant=TENANT)
                assert f"agent-{i}" not in top_names(reader, vector, drained.consistency_token, k=3)
                gone = writer.deregister_agent(f"agent-{i}", tenant=TENANT)
                assert f"agent-{i}" not in top_names(clients[(i + 2) % 3], vector, gone.consistency_token, k=3)
    finally:
        for client in clients:
            client.close()


def test_without_a_token_replicas_converge_and_agree(replicas: list[ServerThread]) -> None:
    a = replicas[0]
    rng = np.random.default_rng(6)
    with CapregClient(a.target) as writer:
        last = 0
        for i in range(20):
            vector = support.unit(rng.standard_normal(DIM).astype(np.float32))
            last = writer.register_agent(vector_agent(f"agent-{i}", vector)).consistency_token
    deadline = time.monotonic() + 20
    while min(r.app.follower.position for r in replicas) < last:  # NOTIFY wakes them; nothing polls
        assert time.monotonic() < deadline, "a replica never caught up"
        time.sleep(0.01)
    digests = {r.run(_digest(r)) for r in replicas}
    assert digests == {a.app.store.index_digest(a.app.serving.space.id)}


async def _digest(server: ServerThread) -> str:
    async with server.app.follower.lock:
        return server.app.serving.index.digest()


def test_a_token_ahead_of_the_log_is_refused(replicas: list[ServerThread]) -> None:
    with CapregClient(replicas[1].target) as client, pytest.raises(CapregError) as refused:
        client.discover("anything", tenant=TENANT, min_seq=10**12)
    assert refused.value.code.name == "INVALID_ARGUMENT" and refused.value.field == "min_seq"


def test_a_policy_written_on_one_replica_applies_with_its_token_on_another(replicas: list[ServerThread]) -> None:
    a, b, _ = replicas
    vector = support.unit(np.ones(DIM, dtype=np.float32))
    with CapregClient(a.target) as on_a, CapregClient(b.target) as on_b:
        registered = on_a.register_agent(vector_agent("tagged", vector))
        assert top_names(on_b, vector, min_seq=registered.consistency_token) == ["tagged"]
        created = on_a.create_policy(
            policy_pb2.Policy(
                tenant=TENANT,
                name="no-test-tools",
                effect=policy_pb2.POLICY_EFFECT_DENY,
                subject=policy_pb2.PolicySubject(everyone=True),
                target=policy_pb2.PolicyTarget(tags_any=["test"]),
            )
        )
        assert top_names(on_b, vector, min_seq=created.consistency_token) == []


def test_health_says_not_serving_until_the_index_has_caught_up(
    database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """A starting replica listens at once but stays out of load balancing until its follower has read the
    change log to its head."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    settings = Settings(host="127.0.0.1", port=0, data_dir=tmp_path, database_url=database_url, auth_enabled=False)
    app = run(build_app(settings, embedder))
    gate = run(_make_event())
    catch_up = app.follower.catch_up

    async def gated_catch_up(target: int = 0) -> int:
        await gate.wait()
        return await catch_up(target)

    app.follower.catch_up = gated_catch_up  # type: ignore[method-assign]
    starting = asyncio.run_coroutine_threadsafe(app.start(), loop)
    try:
        deadline = time.monotonic() + 30
        while not app.port:
            assert time.monotonic() < deadline, "the server never bound its port"
            time.sleep(0.01)
        with CapregClient(f"127.0.0.1:{app.port}") as client:
            assert not client.health()  # listening, NOT_SERVING
            loop.call_soon_threadsafe(gate.set)
            starting.result(60)
            assert client.health()
    finally:
        loop.call_soon_threadsafe(gate.set)
        starting.result(60)
        run(app.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


def test_polling_alone_brings_a_replica_a_change_whose_notify_it_never_heard(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """B's LISTEN connection is gone (as when a NOTIFY is lost while it reconnects): the poll every
    change_poll_s still brings it every change."""
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    with (
        running_server(tmp_path / "a", pg_database, embedder, change_poll_s=3600) as a,
        running_server(tmp_path / "b", pg_database, embedder, change_poll_s=0.2) as b,
    ):
        assert b.app.listener is not None
        b.app.listener.stop()  # nothing wakes B now but its own poll
        vector = support.unit(np.random.default_rng(8).standard_normal(DIM).astype(np.float32))
        with CapregClient(a.target) as writer, CapregClient(b.target) as reader:
            token = writer.register_agent(vector_agent("heard-by-polling", vector)).consistency_token
            deadline = time.monotonic() + 10
            while b.app.follower.position < token:
                assert time.monotonic() < deadline, "polling never brought the change"
                time.sleep(0.02)
            assert top_names(reader, vector) == ["heard-by-polling"]


def test_a_token_read_on_a_replica_that_cannot_catch_up_ends_at_its_deadline(
    replicas: list[ServerThread],
) -> None:
    """B's follower is stuck (a gate holds every catch-up): a Discover with a token B has not applied
    waits, ends with DEADLINE_EXCEEDED at the caller's deadline, and leaves B serving; once B moves, the
    same read succeeds."""
    a, b, _ = replicas
    gate = b.run(_make_event())
    catch_up = b.app.follower.catch_up

    async def gated_catch_up(target: int = 0) -> int:
        await gate.wait()
        return await catch_up(target)

    b.app.follower.catch_up = gated_catch_up  # type: ignore[method-assign]
    vector = support.unit(np.random.default_rng(9).standard_normal(DIM).astype(np.float32))
    try:
        with CapregClient(a.target) as writer, CapregClient(b.target) as reader:
            token = writer.register_agent(vector_agent("late", vector)).consistency_token
            started = time.monotonic()
            with pytest.raises(CapregError) as waited:
                reader.discover(vector=vector.tolist(), tenant=TENANT, top_k=1, min_seq=token, timeout=0.5)
            assert waited.value.code.name == "DEADLINE_EXCEEDED"
            assert time.monotonic() - started < 5
            assert reader.health()  # still serving what it has
            b.loop.call_soon_threadsafe(gate.set)
            assert top_names(reader, vector, min_seq=token) == ["late"]
    finally:
        b.loop.call_soon_threadsafe(gate.set)
        b.app.follower.catch_up = catch_up  # type: ignore[method-assign]
