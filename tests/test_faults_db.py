"""The database going away: while it is gone clients get UNAVAILABLE with a retry hint (never INTERNAL,
UNKNOWN or a hang), Discover keeps answering from memory, and the server recovers by itself when the
database is back. Acknowledged writes are never lost.

Every test but the unit tests runs a real server on a private PostgreSQL cluster of its own
(tests/pg_instance.py), which it stops, kills and restarts; the shared instance is never touched."""

from __future__ import annotations

import functools
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import psycopg.errors
import pytest
import sqlalchemy.exc
from capreg.v1 import agent_pb2
from capreg_client import CapregClient, CapregError, UnavailableError
from sqlalchemy import text

from registry.domain.errors import ErrorCode
from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.store.engine import PG_CONNECT_TIMEOUT_S, make_engine
from registry.store.outages import database_unavailable
from registry.transport.errors import status_for
from tests import support
from tests.pg_instance import PgInstance, StopMode
from tests.support import ServerThread, make_agent, make_capability

DEADLINE_S = 10.0  # every call's deadline; a call that outlives it by more than SLACK_S hung
SLACK_S = 2.0


# -- the mapping, unit-tested ----------------------------------------------------------------------------


def _wrapped(original: Exception, *, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    """What SQLAlchemy raises for `original` (OperationalError, IntegrityError, ...)."""
    wrapped = sqlalchemy.exc.DBAPIError.instance(
        "SELECT 1",
        {},
        original,
        sqlite3.Error if isinstance(original, sqlite3.Error) else psycopg.Error,
        connection_invalidated=invalidated,
    )
    assert isinstance(wrapped, sqlalchemy.exc.DBAPIError)
    return wrapped


@pytest.mark.parametrize(
    "error",
    [
        _wrapped(psycopg.OperationalError('connection to server at "127.0.0.1" failed: Connection refused')),
        _wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")),
        _wrapped(psycopg.errors.CannotConnectNow("the database system is shutting down")),
        _wrapped(psycopg.errors.AdminShutdown("terminating connection due to administrator command")),
        _wrapped(psycopg.errors.CrashShutdown("terminating connection because of crash of another server process")),
        _wrapped(psycopg.errors.TooManyConnections("sorry, too many clients already")),
        _wrapped(psycopg.errors.ConnectionTimeout("connection timeout expired")),
        _wrapped(psycopg.InterfaceError("the connection is lost"), invalidated=True),
        sqlalchemy.exc.TimeoutError("QueuePool limit of size 8 overflow 8 reached, connection timed out"),
        psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e).splitlines()[0][:40],
)
def test_database_connectivity_failures_become_unavailable_with_a_retry_hint(error: Exception) -> None:
    unavailable = database_unavailable(error)
    assert unavailable is not None
    assert unavailable.code is ErrorCode.UNAVAILABLE
    assert unavailable.retry_after_s is not None and unavailable.retry_after_s > 0
    assert "retry" in unavailable.message
    status = status_for(unavailable)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in status.details)


def test_a_connectivity_failure_is_found_behind_raise_from() -> None:
    try:
        try:
            raise _wrapped(psycopg.errors.AdminShutdown("terminating connection due to administrator command"))
        except sqlalchemy.exc.DBAPIError as exc:
            raise RuntimeError("while registering") from exc
    except RuntimeError as outer:
        assert database_unavailable(outer) is not None


@pytest.mark.parametrize(
    "error",
    [
        _wrapped(psycopg.errors.DeadlockDetected("deadlock detected")),
        _wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
        _wrapped(psycopg.errors.DiskFull("could not extend file")),
        _wrapped(psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")),
        _wrapped(sqlite3.OperationalError("database is locked")),
        ValueError("connection refused"),  # not a database error, whatever it says
        RuntimeError("boom"),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e).splitlines()[0][:40],
)
def test_other_errors_keep_their_own_mapping(error: Exception) -> None:
    assert database_unavailable(error) is None


# -- helpers ------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.01)


def unit_vector(rng: np.random.Generator, dim: int) -> list[float]:
    vector = rng.standard_normal(dim)
    return [float(x) for x in vector / np.linalg.norm(vector)]


def vector_agent(name: str, vector: list[float]) -> agent_pb2.Agent:
    """An agent whose one capability brings its own vector, so nothing is embedded."""
    return make_agent(name, make_capability("act", vector=agent_pb2.Vector(values=vector)))


def top_match(client: CapregClient, vector: list[float]) -> str:
    matches = client.discover(vector=vector, top_k=1).matches
    return matches[0].agent_name if matches else ""


@pytest.fixture
def pg_server(private_pg: PgInstance, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    support.migrated_engine(private_pg.url).dispose()
    with support.running_server(tmp_path / "data", private_pg.url, embedder) as server:
        yield server


@pytest.fixture
def pg_client(pg_server: ServerThread) -> Iterator[CapregClient]:
    with CapregClient(pg_server.target, timeout=DEADLINE_S) as client:
        yield client


def client_backends(instance: PgInstance) -> list[tuple[int, str]]:
    """(pid, query) of every client connection but ours."""
    with psycopg.connect(instance.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(int(pid), str(query)) for pid, query in rows]


# -- the database stops, then comes back ---------------------------------------------------------------------


def test_a_stopped_database_gives_unavailable_then_the_server_recovers_by_itself(
    private_pg: PgInstance, pg_server: ServerThread, pg_client: CapregClient, embedder: SentenceTransformerEmbedder
) -> None:
    rng = np.random.default_rng(1)
    before, during = unit_vector(rng, embedder.dim), unit_vector(rng, embedder.dim)
    pg_client.register_agent(vector_agent("before", before))
    assert top_match(pg_client, before) == "before"

    private_pg.stop("fast")
    for call in (
        lambda: pg_client.register_agent(vector_agent("during", during)),
        lambda: pg_client.get_agent("before"),
        pg_client.list_agents,
    ):
        started = time.monotonic()
        with pytest.raises(UnavailableError) as err:
            call()
        assert time.monotonic() - started < DEADLINE_S  # an answer, not a deadline
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.retry_after_s is not None and err.value.retry_after_s > 0
        assert "retry" in err.value.message
    assert top_match(pg_client, before) == "before"  # Discover answers from memory meanwhile
    assert pg_client.health()

    private_pg.start()
    back = time.monotonic()
    answer = pg_client.register_agent(vector_agent("during", during))  # the first call after, same server
    print(f"\nrecovery after a fast stop: first write {time.monotonic() - back:.3f} s after the database was back")
    assert answer.created
    assert pg_client.get_agent("during").name == "during"
    assert top_match(pg_client, during) == "during"
    assert top_match(pg_client, before) == "before"


def test_an_unresponsive_database_gives_unavailable_within_the_connect_timeout(
    private_pg: PgInstance, pg_server: ServerThread, pg_client: CapregClient, embedder: SentenceTransformerEmbedder
) -> None:
    """The database's port accepts connections but nothing answers (a hung host): connecting gives up after
    the engine's connect_timeout instead of holding the call until its deadline."""
    vector = unit_vector(np.random.default_rng(4), embedder.dim)
    private_pg.stop("fast")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", private_pg.port))
        silent.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
        started = time.monotonic()
        with pytest.raises(UnavailableError) as err:
            pg_client.register_agent(vector_agent("silent", vector), timeout=PG_CONNECT_TIMEOUT_S + DEADLINE_S)
        elapsed = time.monotonic() - started
    assert PG_CONNECT_TIMEOUT_S - 1 <= elapsed < PG_CONNECT_TIMEOUT_S + SLACK_S, elapsed
    assert err.value.retry_after_s is not None and err.value.retry_after_s > 0
    private_pg.start()
    assert pg_client.register_agent(vector_agent("silent", vector)).created
    assert top_match(pg_client, vector) == "silent"


def test_terminated_connections_are_replaced_without_errors(
    private_pg: PgInstance, pg_server: ServerThread, pg_client: CapregClient, embedder: SentenceTransformerEmbedder
) -> None:
    rng = np.random.default_rng(2)
    # Fill the pool with several connections: concurrent writes each hold one.
    vectors = {f"warm-{i}": unit_vector(rng, embedder.dim) for i in range(8)}
    threads = [
        threading.Thread(target=pg_client.register_agent, args=(vector_agent(name, vector),))
        for name, vector in vectors.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S + SLACK_S)
    wait_for(lambda: any("LISTEN" in query for _, query in client_backends(private_pg)), 10, "the LISTEN connection")
    killed = client_backends(private_pg)
    assert len(killed) >= 2, killed  # pooled connections and the LISTEN connection
    with psycopg.connect(private_pg.url, autocommit=True) as admin:
        for pid, _ in killed:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: not {pid for pid, _ in killed} & {pid for pid, _ in client_backends(private_pg)}, 10, "the kill")

    unavailable = 0
    calls: list[Callable[[], Any]] = [
        functools.partial(pg_client.register_agent, vector_agent("after-kill", unit_vector(rng, embedder.dim))),
        *(functools.partial(pg_client.get_agent, name) for name in vectors),
        pg_client.list_agents,
    ]
    for call in calls:
        try:
            call()
        except UnavailableError:
            unavailable += 1
            call()  # one UNAVAILABLE at worst, then success
    assert unavailable <= 1
    assert all(top_match(pg_client, vector) == name for name, vector in vectors.items())
    # The change listener notices it lost its connection and listens again.
    wait_for(lambda: any("LISTEN" in query for _, query in client_backends(private_pg)), 10, "LISTEN again")


# -- under load ----------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    writer: int
    name: str
    started: float
    ended: float
    code: grpc.StatusCode | None  # None: acknowledged
    retry_after_s: float | None = None
    created: bool = False


@dataclass
class Writers:
    """Threads that register agents continuously, each retrying an unacknowledged write (same agent,
    same vector) until it is acknowledged, as a client told "retry" would."""

    target: str
    dim: int
    count: int = 4
    max_attempts: int = 20_000  # per writer, so the loop is bounded even if nobody stops it
    stop: threading.Event = field(default_factory=threading.Event)
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[str, list[float]] = field(default_factory=dict)
    crashed: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.count)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(DEADLINE_S + SLACK_S)
        assert not any(thread.is_alive() for thread in self.threads), "a writer is stuck"

    def _run(self, writer: int) -> None:
        rng = np.random.default_rng(100 + writer)
        written = 0
        name, vector = f"w{writer}-0", unit_vector(rng, self.dim)
        try:
            with CapregClient(self.target, timeout=DEADLINE_S) as client:
                for _ in range(self.max_attempts):
                    if self.stop.is_set():
                        return
                    started = time.monotonic()
                    try:
                        answer = client.register_agent(vector_agent(name, vector))
                    except CapregError as err:
                        self._record(Attempt(writer, name, started, time.monotonic(), err.code, err.retry_after_s))
                        # Back off briefly before retrying, as told (scaled down so recovery is measured finely).
                        self.stop.wait(min(err.retry_after_s or 0.0, 0.02))
                        continue
                    self._record(Attempt(writer, name, started, time.monotonic(), None, created=answer.created))
                    with self.lock:
                        self.acked[name] = vector
                    written += 1
                    name, vector = f"w{writer}-{written}", unit_vector(rng, self.dim)
        except BaseException as exc:
            with self.lock:
                self.crashed.append(exc)

    def _record(self, attempt: Attempt) -> None:
        with self.lock:
            self.attempts.append(attempt)

    def acks_after(self, moment: float) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.code is None and a.ended > moment]

    def failures_after(self, moment: float) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.code is not None and a.ended > moment]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_acknowledged_writes_survive_a_database_restart_under_load(
    mode: StopMode,
    private_pg: PgInstance,
    pg_server: ServerThread,
    pg_client: CapregClient,
    embedder: SentenceTransformerEmbedder,
) -> None:
    """Only UNAVAILABLE may fail a write: every agent name is written by one writer, one call at a time,
    with no expected_generation, so no ABORTED (generation mismatch, or two first registrations of one
    name racing) and no ALREADY_EXISTS can legitimately happen; DEADLINE_EXCEEDED would be a hang."""
    writers = Writers(pg_server.target, embedder.dim)
    writers.start()
    try:
        wait_for(lambda: len(writers.acks_after(0)) >= 40, 60, "writes before the restart")
        private_pg.stop(mode)
        down = time.monotonic()
        wait_for(lambda: len(writers.failures_after(down)) >= 4, 30, "writes refused while the database is down")
        private_pg.start()
        up = time.monotonic()
        wait_for(lambda: len(writers.acks_after(up)) >= 1, 60, "the first write after the database came back")
        first = min(a.ended for a in writers.acks_after(up))
        wait_for(lambda: len(writers.acks_after(up)) >= 40, 60, "writes after the restart")
    finally:
        writers.finish()
    assert not writers.crashed, writers.crashed

    attempts = writers.attempts
    failures = [a for a in attempts if a.code is not None]
    longest = max(a.ended - a.started for a in attempts)
    print(
        f"\n{mode} restart under load: database down {up - down:.3f} s; first write {first - up:.3f} s after it "
        f"was back; {len(writers.acked)} writes acknowledged, {len(failures)} refused; longest call {longest:.3f} s"
    )
    assert longest < DEADLINE_S + SLACK_S  # no call hung
    assert {a.code for a in failures} == {grpc.StatusCode.UNAVAILABLE}
    assert all(a.retry_after_s is not None and a.retry_after_s > 0 for a in failures)

    # Every acknowledged write is stored and answers Discover (the index follows every acknowledgment).
    missing = [name for name in writers.acked if pg_client.get_agent(name).name != name]
    undiscovered = [name for name, vector in writers.acked.items() if top_match(pg_client, vector) != name]
    assert not missing and not undiscovered, (missing, undiscovered)
    engine = make_engine(private_pg.url)
    with engine.connect() as conn:
        stored = {row[0] for row in conn.execute(text("SELECT name FROM agents"))}
    engine.dispose()
    assert set(writers.acked) <= stored


# -- a commit whose acknowledgment is lost ---------------------------------------------------------------------


def test_a_retried_write_whose_first_commit_went_unacknowledged_is_discoverable(
    pg_server: ServerThread, pg_client: CapregClient, embedder: SentenceTransformerEmbedder
) -> None:
    """The connection drops after COMMIT but before its answer (simulated in the store): the client gets
    UNAVAILABLE, retries as told, and the retry finds nothing to change. The agent must still be in the
    index: an unchanged write answers only once the index reflects the state it read."""
    store = pg_server.app.store
    real_register = store.register_many  # every registration, one or many, goes through it
    lost = threading.Event()

    def commit_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        result = real_register(*args, **kwargs)  # committed
        if not lost.is_set():
            lost.set()
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", {}, psycopg.OperationalError("server closed the connection unexpectedly")
            )
        return result

    vector = unit_vector(np.random.default_rng(3), embedder.dim)
    store.register_many = commit_then_lose_the_answer  # type: ignore[method-assign]
    try:
        with pytest.raises(UnavailableError):
            pg_client.register_agent(vector_agent("ambiguous", vector))
        pg_client.register_agent(vector_agent("ambiguous", vector))  # the retry the error message suggests
    finally:
        store.register_many = real_register  # type: ignore[method-assign]
    assert pg_client.get_agent("ambiguous").name == "ambiguous"
    assert top_match(pg_client, vector) == "ambiguous"
