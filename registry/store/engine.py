"""Engine construction for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event


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
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
