"""The change log is gap-safe: a follower that reads `seq > watermark` never skips a row that commits late.

A bare bigserial would fail these tests: a transaction that drew a lower seq but commits after a higher
one would be skipped by a follower that already moved past it."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select, text

from registry.store import changelog
from registry.store import tables as t
from tests import support


@pytest.fixture
def log_engine(database_url: str) -> Iterator[Engine]:
    engine = support.migrated_engine(database_url)
    yield engine
    engine.dispose()


def follow_once(engine: Engine, after: int) -> list[int]:
    with engine.connect() as conn:
        return [row.seq for row in changelog.read_after(conn, after, 10_000)]


def waiting_on_the_log_lock(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :low"),
                {"low": changelog.LOG_LOCK_KEY & 0xFFFFFFFF},
            ).scalar_one()
        )


def test_a_later_seq_waits_for_an_earlier_transaction_to_end(pg_database: str) -> None:
    """Transaction A has drawn a seq and not committed: B cannot draw the next one until A ends, so a
    follower never sees B's row while A's may still appear below it."""
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    a = engine.connect()
    a_tx = a.begin()
    seq_a = changelog.append(a, "t", "agent", "a", "create")
    b_seq: list[int] = []

    def writer_b() -> None:
        with engine.begin() as b:
            b_seq.append(changelog.append(b, "t", "agent", "b", "create"))

    b_thread = threading.Thread(target=writer_b)
    b_thread.start()
    deadline = time.monotonic() + 10
    while waiting_on_the_log_lock(engine) == 0:  # B is blocked on the lock A holds
        assert time.monotonic() < deadline, "B never queued for the change-log lock"
    assert follow_once(engine, 0) == []  # neither A nor B is visible yet
    a_tx.commit()
    a.close()
    b_thread.join(timeout=10)
    assert not b_thread.is_alive()
    assert b_seq[0] > seq_a
    assert follow_once(engine, 0) == [seq_a, b_seq[0]]
    engine.dispose()


def test_concurrent_writers_with_late_commits_and_rollbacks_never_leave_a_follower_behind(
    log_engine: Engine,
) -> None:
    """Writers hold their transaction open for a random while after drawing a seq, and some roll back,
    while a follower reads `seq > watermark` as fast as it can. Everything committed is seen, once."""
    support.empty_tables(log_engine)
    committed: list[int] = []
    committed_lock = threading.Lock()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(40):
                with log_engine.connect() as conn:
                    tx = conn.begin()
                    seq = changelog.append(conn, "t", "agent", f"w{seed}-{i}", "update")
                    time.sleep(rng.random() * 0.004)  # holds the transaction open: a commit that comes late
                    if rng.random() < 0.15:
                        tx.rollback()  # leaves a gap that never fills
                        continue
                    tx.commit()
                with committed_lock:
                    committed.append(seq)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def follower() -> None:
        watermark = 0
        while not stop.is_set():
            rows = follow_once(log_engine, watermark)
            seen.extend(rows)
            if rows:
                watermark = rows[-1]

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    follow = threading.Thread(target=follower)
    follow.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    stop.set()
    follow.join(timeout=30)
    assert not errors, errors
    # A last read picks up what committed after the follower's final pass; nothing below its watermark.
    final = follow_once(log_engine, seen[-1] if seen else 0)
    seen.extend(final)
    assert len(seen) == len(set(seen)), "a change was delivered twice"
    assert sorted(seen) == sorted(committed), "the follower skipped a change that committed late"
    with log_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.change_log)).scalar_one() == len(committed)


def test_a_bulk_append_returns_each_rows_own_seq_in_order(log_engine: Engine) -> None:
    """append_many: one insert for many rows, each answered with its own seq, consecutive and in the given
    order (a bulk registration answers each agent with its token)."""
    from datetime import UTC, datetime

    changes = [("bulk", "agent", f"agent-{i}", "create") for i in range(250)]
    with log_engine.begin() as conn:
        before = changelog.last_seq(conn)
        seqs = changelog.append_many(conn, changes, datetime.now(UTC))
    assert seqs == list(range(seqs[0], seqs[0] + 250)) and seqs[0] > before
    with log_engine.connect() as conn:
        rows = changelog.read_after(conn, before, 1000)
    assert [(r.seq, r.entity_id) for r in rows if r.tenant == "bulk"] == [
        (seq, f"agent-{i}") for i, seq in enumerate(seqs)
    ]
    with log_engine.begin() as conn:
        assert changelog.append_many(conn, [], datetime.now(UTC)) == []
