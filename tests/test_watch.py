"""WatchDiscover against real servers: a new answer for each kind of event (agent registered, drained, lease
expired, budget and policy changed, vector space promoted) within a second, on a `capreg serve` process other
than the one written to; bursts coalesced; resumable by digest; bad questions refused with the field named
within `discover`; tenants kept apart."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from capreg.v1 import agent_pb2, discovery_pb2, policy_pb2
from capreg_client import CapregClient, CapregError, discover_request
from google.protobuf.duration_pb2 import Duration

from bench.reliability import Server
from registry.embedding.sentence import MINILM_NAME, SentenceTransformerEmbedder
from tests import support
from tests.support import ServerThread, make_agent, make_capability, running_server
from tests.test_snapshots import serve

TENANT, OTHER = "watchers", "others"
TASK = "reconcile the supplier invoices against purchase orders"
DESCRIPTION = "Reconciles supplier invoices with purchase orders and flags mismatches."
EVENT_LATENCY_S = 1.0  # the bound: a watcher sees each change within a second
WAIT_S = 20.0  # how long a test waits for an update at all before it fails


def invoice_agent(name: str, tenant: str = TENANT, *, cost: float = 0.5, lease_s: int = 0) -> agent_pb2.Agent:
    cap = make_capability("reconcile", description=DESCRIPTION, cost=agent_pb2.Cost(per_call_usd=cost))
    agent = make_agent(name, cap, tenant=tenant)
    if lease_s:
        agent.lease_ttl.CopyFrom(Duration(seconds=lease_s))
    return agent


@dataclass(frozen=True, slots=True)
class Update:
    at: float  # time.time() when the watcher received it
    names: list[str]
    space: str
    digest: str
    reasons: list[str]


class Watcher:
    """Reads one WatchDiscover stream on a thread and hands each answer over through a queue."""

    def __init__(self, client: CapregClient, request: discovery_pb2.DiscoverRequest, **options: object):
        self._updates: queue.Queue[Update | BaseException] = queue.Queue()
        self._stream = client.watch_discover(request, **options)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for r in self._stream:
                names = [m.agent_name for m in r.answer.matches]
                self._updates.put(Update(time.time(), names, r.answer.vector_space, r.answer_digest, list(r.reasons)))
        except BaseException as error:  # handed to the test thread
            self._updates.put(error)

    def next(self, timeout: float = WAIT_S) -> Update:
        item = self._updates.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def until(self, predicate: object, timeout: float = WAIT_S) -> list[Update]:
        """Updates up to and including the first for which predicate(update) holds."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            update = self.next(max(deadline - time.monotonic(), 0.001))
            seen.append(update)
            if predicate(update):  # type: ignore[operator]
                return seen

    def pending(self) -> bool:
        return not self._updates.empty()

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(timeout=10)


@pytest.fixture
def watched_pair(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> Iterator[tuple[ServerThread, Server]]:
    """A server in this process to write to, and a `capreg serve` child process to watch, on one PostgreSQL."""
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    child = Server(tmp_path / "watched", pg_database, snapshot_interval_s=60, label="watched")
    child.start()
    try:
        child.wait_ready()
        with serve(tmp_path / "writer", pg_database, embedder) as writer:
            yield writer, child
    finally:
        child.stop()


def test_every_kind_of_change_reaches_a_watcher_on_another_process_within_a_second(
    watched_pair: tuple[ServerThread, Server],
) -> None:
    writer, child = watched_pair
    latencies: dict[str, float] = {}
    with CapregClient(writer.target, timeout=30) as w, child.client() as watched:
        alpha = w.register_agent(invoice_agent("alpha")).agent
        budget = w.create_budget("watch-budget", 10.0, tenant=TENANT).budget
        request = discover_request(TASK, tenant=TENANT, top_k=3, budget_id=budget.id)
        watcher = Watcher(watched, request, coalesce_ms=50)
        try:
            first = watcher.until(lambda u: "alpha" in u.names)
            assert first[-1].reasons == ["initial"] or "agent" in first[-1].reasons

            def expect(kind: str, started: float, holds: object) -> Update:
                update = watcher.until(holds)[-1]
                latencies[kind] = update.at - started
                assert latencies[kind] < EVENT_LATENCY_S, (kind, latencies)
                return update

            started = time.time()
            w.register_agent(invoice_agent("beta"))
            assert "agent" in expect("registered", started, lambda u: "beta" in u.names).reasons

            started = time.time()
            w.update_agent_status("beta", "draining", tenant=TENANT)
            expect("drained", started, lambda u: "beta" not in u.names)

            leased = w.register_agent(invoice_agent("gamma", lease_s=1)).agent
            watcher.until(lambda u: "gamma" in u.names)
            expires = leased.lease_expire_time.ToDatetime().timestamp()
            update = watcher.until(lambda u: "gamma" not in u.names)[-1]
            latencies["lease expired"] = update.at - expires
            assert latencies["lease expired"] < EVENT_LATENCY_S, latencies
            assert update.reasons == ["lease"]

            started = time.time()
            w.update_budget(0.1, id=budget.id, tenant=TENANT)  # under alpha's 0.5 per call
            assert "budget" in expect("budget", started, lambda u: "alpha" not in u.names).reasons
            w.update_budget(10.0, id=budget.id, tenant=TENANT)
            watcher.until(lambda u: "alpha" in u.names)

            started = time.time()
            deny = policy_pb2.Policy(
                tenant=TENANT, name="no-alpha", effect=policy_pb2.POLICY_EFFECT_DENY,
                subject=policy_pb2.PolicySubject(everyone=True),
                target=policy_pb2.PolicyTarget(agent_ids=[alpha.id]),
            )  # fmt: skip
            w.create_policy(deny)
            assert "policy" in expect("policy", started, lambda u: "alpha" not in u.names).reasons
            w.delete_policy("no-alpha", tenant=TENANT)
            watcher.until(lambda u: "alpha" in u.names)

            w.create_space("alt", MINILM_NAME, "{name}. {description}")
            list(w.backfill_space("alt"))
            started = time.time()
            w.promote_space("alt")
            assert "space" in expect("space promoted", started, lambda u: u.space == "alt").reasons
        finally:
            watcher.close()
    print("watch latencies (s):", {k: round(v, 3) for k, v in latencies.items()})


@pytest.fixture
def server(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    data = tmp_path / "data"
    with running_server(data, f"sqlite:///{data / 'capreg.db'}", embedder, max_watches=2) as s:
        yield s


@pytest.fixture
def client(server: ServerThread) -> Iterator[CapregClient]:
    with CapregClient(server.target, timeout=30) as c:
        yield c


def test_a_burst_of_writes_is_coalesced(client: CapregClient) -> None:
    client.register_agent(invoice_agent("seed"))
    watcher = Watcher(client, discover_request(TASK, tenant=TENANT, top_k=20), coalesce_ms=2000)
    try:
        assert watcher.next().names == ["seed"]
        for i in range(8):
            client.register_agent(invoice_agent(f"burst-{i}"))
        updates = watcher.until(lambda u: len(u.names) == 9)
        assert len(updates) == 1, [u.names for u in updates]  # all eight in one answer
        assert updates[0].reasons == ["agent"]
    finally:
        watcher.close()


def test_a_watch_resumed_with_the_last_digest_sends_only_what_changed(client: CapregClient) -> None:
    client.register_agent(invoice_agent("alpha"))
    request = discover_request(TASK, tenant=TENANT, top_k=5)
    first = Watcher(client, request)
    try:
        digest = first.next().digest
    finally:
        first.close()
    resumed = Watcher(client, request, last_answer_digest=digest)
    try:
        client.register_agent(invoice_agent("beta"))
        update = resumed.next()
        assert update.reasons == ["agent"] and set(update.names) == {"alpha", "beta"}  # no repeat of the old one
    finally:
        resumed.close()


def test_another_tenants_private_agents_never_show(client: CapregClient) -> None:
    client.register_agent(invoice_agent("mine"))
    watcher = Watcher(client, discover_request(TASK, tenant=TENANT, top_k=5), coalesce_ms=10)
    try:
        assert watcher.next().names == ["mine"]
        client.register_agent(invoice_agent("theirs", tenant=OTHER))  # private to OTHER
        client.register_agent(invoice_agent("mine-too"))
        update = watcher.until(lambda u: "mine-too" in u.names)[-1]
        assert "theirs" not in update.names
    finally:
        watcher.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"top_k": 1000}, "discover.top_k"),
        ({"min_seq": 10**12}, "discover.min_seq"),
        ({"cost_preference": 2.0}, "discover.cost_preference"),
        ({"coalesce_ms": 20_000}, "coalesce_ms"),
    ],
)
def test_a_bad_question_is_refused_with_the_field(client: CapregClient, change: dict[str, int], field: str) -> None:
    request = discover_request(TASK, tenant=TENANT)
    options: dict[str, int] = {}
    for key, value in change.items():
        if key == "coalesce_ms":
            options[key] = value
        else:
            setattr(request, key, value)
    with pytest.raises(CapregError) as refused:
        next(iter(client.watch_discover(request, coalesce_ms=options.get("coalesce_ms", 0))))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == field


def test_watches_are_limited_per_process(client: CapregClient) -> None:
    request = discover_request(TASK, tenant=TENANT)
    open_watches = [Watcher(client, request) for _ in range(2)]
    try:
        for watcher in open_watches:
            watcher.next()
        with pytest.raises(CapregError) as refused:
            next(iter(client.watch_discover(request)))
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for watcher in open_watches:
            watcher.close()


def test_re_evaluations_leave_the_discover_id_memory_to_real_discovers(
    client: CapregClient, server: ServerThread
) -> None:
    """A watch's answers are re-evaluations: they must not push real Discovers' ids out of the memory that
    ReportOutcome's discover_id relies on."""
    client.register_agent(invoice_agent("alpha"))
    real = client.discover(TASK, tenant=TENANT)
    memory = server.app.discovery.memory
    before = len(memory._tasks)
    watcher = Watcher(client, discover_request(TASK, tenant=TENANT, top_k=20), coalesce_ms=10)
    try:
        watcher.next()
        for i in range(5):
            client.register_agent(invoice_agent(f"more-{i}"))
            watcher.until(lambda u, i=i: f"more-{i}" in u.names)
    finally:
        watcher.close()
    assert len(memory._tasks) == before
    assert memory.recall(real.discover_id, TENANT) is not None
