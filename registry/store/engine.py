"""Engine construction for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

# PostgreSQL: how long opening a connection may take, and how long a request waits for a pooled one,
# before it fails (and the client gets UNAVAILABLE with a retry hint) instead of hanging.
PG_CONNECT_TIMEOUT_S = 5
PG_POOL_TIMEOUT_S = 10.0
# TCP keepalives, so a connection to a database host that vanished is noticed within about 30 s.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 3}


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'capreg.db'}"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine with the settings each backend needs for correctness under concurrency."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Any) -> None:
            # Take the write lock at BEGIN so read-then-write transactions never deadlock-upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # pysqlite's own transaction handling would BEGIN lazily; let the event above do it.
        @event.listens_for(engine, "connect", insert=True)
        def _sqlite_autocommit_off(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **PG_KEEPALIVES}
    for name in make_url(url).query:  # what the URL says wins
        connect_args.pop(name, None)
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=PG_POOL_TIMEOUT_S,
        # A checkout tests the connection first; a dead one (database restarted, backend terminated) is
        # replaced, along with every pooled connection older than it, so the server recovers by itself.
        pool_pre_ping=True,
        connect_args=connect_args,
    )
