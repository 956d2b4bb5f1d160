"""Change notifications across server processes on PostgreSQL: writers NOTIFY in their transaction
(delivered at commit), every process LISTENs and refreshes what it caches at once, instead of waiting
for its next poll."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Connection, text

from registry.store.engine import PG_CONNECT_TIMEOUT_S

log = logging.getLogger(__name__)
CHANNEL = "capreg_changes"


def notify(conn: Connection, entity: str) -> None:
    """Tell every listening process that `entity` changed, when this transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :entity)"), {"channel": CHANNEL, "entity": entity})


class ChangeListener:
    """A thread holding one LISTEN connection; `on_change(entity)` runs in that thread."""

    def __init__(self, dsn: str, on_change: Callable[[str], object]):
        params = conninfo_to_dict(dsn.replace("postgresql+psycopg://", "postgresql://"))
        params.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)  # a vanished host must not hang us
        self._dsn = make_conninfo("", **params)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capreg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._on_change("*")  # anything may have changed while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._on_change(note.payload)
            except psycopg.Error:
                log.warning("change notifications lost their connection; reconnecting (polling continues)")
                self._stop.wait(1.0)
