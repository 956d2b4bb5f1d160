"""kill -9 a real `capreg serve` under write load, again and again, and check that nothing acknowledged
was lost and nothing unacknowledged half-happened.

Each cycle: three client threads register agents with their own vectors, re-register them with a new
endpoint and vector, and deregister them (each agent written by one thread, every acknowledgment recorded
with its consistency token); at a random moment the server gets SIGKILL; its snapshots are kept, deleted
or corrupted (in rotation); it is started again and waited for until gRPC health says SERVING. Then
ListAgents must show every acknowledged final state and nothing else (a write in flight at the kill may
land either way), Discover by each live agent's vector (top_k=1, min_seq = the newest token) must return
it, removed agents must be neither discovered nor found, and GetIndexStatus's digest must equal the one
RegistryStore.index_digest computes from the database. Across the cycles the index must have come both
from a snapshot and from the database.

The harness is bench/reliability.py's (which runs more cycles, with replicas). A server start takes about
4.5 s here (importing torch and loading the model), so the cycle counts keep this file near two minutes.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from bench import reliability
from bench.reliability import Cycle, Ledger, Server
from registry.store.engine import make_engine, sqlite_url

PG_CYCLES = 20
SQLITE_CYCLES = 2  # keep, then drop the snapshots: one restart from each source
SNAPSHOT_INTERVAL_S = 0.3  # short, so most restarts find a snapshot written during the load
BURST_S = (0.15, 0.7)  # how long the load runs before the kill, drawn per cycle


@pytest.fixture
def seed() -> int:
    """Random per run (the moments of the kills are the point), printed, and fixed by CAPREG_CRASH_SEED."""
    value = int(os.environ.get("CAPREG_CRASH_SEED", random.randrange(2**31)))
    print(f"\nCAPREG_CRASH_SEED={value}")
    return value


def crash_and_check(server: Server, database_url: str, cycles: int, seed: int) -> list[Cycle]:
    """Start the server, run the kill cycles, stop it; every cycle must have passed its checks."""
    started = time.monotonic()
    server.start()
    try:
        print(f"first start: ready in {server.wait_ready():.2f} s")
        engine = make_engine(database_url)  # after the first start: the embedded SQLite migrates itself then
        try:
            done = reliability.kill_cycles(
                [server],
                engine,
                Ledger(),
                cycles,
                random.Random(seed),
                burst_s=BURST_S,
                report=lambda cycle: print(cycle.line(), flush=True),
            )
        finally:
            engine.dispose()
    finally:
        server.stop()
    acked = sum(c.check.acked for c in done)
    print(
        f"{cycles} kills in {time.monotonic() - started:.1f} s: {acked} writes acknowledged, "
        f"{sum(c.check.found for c in done)} found; restart-to-ready max "
        f"{max(c.restart_to_ready_s for c in done):.2f} s"
    )
    failed = [c.line() for c in done if not c.ok]
    assert not failed, "\n".join(failed) + f"\nserver log:\n{server.log_tail()}"
    assert all(c.check.acked > 0 for c in done), "a cycle acknowledged no write: the load did not run"
    assert sum(c.check.found for c in done) == acked
    return done


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(480)  # about 2 minutes here; 21 cold server starts on a busy machine take longer
def test_acknowledged_writes_survive_kill_9_on_postgres(fresh_pg_url: str, tmp_path: Path, seed: int) -> None:
    server = Server(tmp_path / "data", fresh_pg_url, snapshot_interval_s=SNAPSHOT_INTERVAL_S, label="pg")
    done = crash_and_check(server, fresh_pg_url, PG_CYCLES, seed)
    sources = {c.startup_source for c in done}
    assert sources == {"snapshot", "database"}, sources
    # A snapshot left intact is always used; a deleted or corrupted one never is (Cycle.ok checked that).
    assert any(c.plan == "corrupt" and c.startup_source == "database" for c in done)


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9_on_sqlite(tmp_path: Path, seed: int) -> None:
    """The embedded database: one process owns the file; WAL with synchronous=FULL must keep every
    acknowledged write through SIGKILL."""
    data = tmp_path / "data"
    server = Server(data, None, snapshot_interval_s=SNAPSHOT_INTERVAL_S, label="sqlite")
    done = crash_and_check(server, sqlite_url(data), SQLITE_CYCLES, seed)
    assert {c.startup_source for c in done} == {"snapshot", "database"}
