"""Test helpers: databases, a real server on a free port, agent builders."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from capreg.v1 import agent_pb2
from sqlalchemy import Engine, create_engine, text

from registry.app import App, build_app
from registry.config import Settings
from registry.embedding.base import Embedder
from registry.store import migrate
from registry.store.engine import make_engine
from registry.store.tables import metadata
from registry.telemetry_setup import TelemetryExporters

T = TypeVar("T")
PG_ADMIN_URL = os.environ.get("CAPREG_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def create_pg_database() -> str:
    """A new, empty PostgreSQL database; fails loudly when the server is unreachable."""
    name = f"capreg_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name


def drop_pg_database(name: str) -> None:
    admin = create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def empty_tables(engine: Engine) -> None:
    """Delete every row, children first, keeping the schema."""
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def migrated_engine(url: str) -> Engine:
    engine = make_engine(url)
    migrate.upgrade(engine)
    return engine


def unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = (vector / np.linalg.norm(vector, axis=-1, keepdims=True)).astype(np.float32)
    return result


def make_capability(name: str = "summarize", version: str = "1.0.0", **fields: Any) -> agent_pb2.Capability:
    defaults: dict[str, Any] = {
        "description": f"Does {name} well.",
        "examples": [f"please {name} this"],
        "tags": ["test"],
        "input_modes": ["text"],
        "output_modes": ["text"],
        "cost": agent_pb2.Cost(per_call_usd=0.001),
        "latency_p50_ms": 100.0,
        "regions": ["eu-west-1"],
    }
    defaults.update(fields)
    return agent_pb2.Capability(name=name, version=version, **defaults)


def make_agent(name: str = "agent-a", *capabilities: agent_pb2.Capability, **fields: Any) -> agent_pb2.Agent:
    fields.setdefault("kind", agent_pb2.AGENT_KIND_AGENT)
    fields.setdefault("endpoint", f"https://{name}.example.com")
    return agent_pb2.Agent(name=name, capabilities=list(capabilities) or [make_capability()], **fields)


class ServerThread:
    """A real capreg server on a free port, its event loop in a background thread."""

    def __init__(
        self, settings: Settings, embedder: Embedder, demo: bool = False, exporters: TelemetryExporters | None = None
    ):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="capreg-test-server")
        self._thread.start()
        self.app: App = self.run(build_app(settings, embedder, exporters=exporters))
        if demo:
            self.run(self.app.load_demo_if_empty())
        self.port = self.run(self.app.start())
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


@contextmanager
def running_server(
    data_dir: Path,
    database_url: str,
    embedder: Embedder,
    *,
    demo: bool = False,
    exporters: TelemetryExporters | None = None,
    **settings: Any,
) -> Iterator[ServerThread]:
    settings.setdefault("auth_enabled", False)  # the auth suites switch it on
    config = Settings(host="127.0.0.1", port=0, data_dir=data_dir, database_url=database_url, **settings)
    server = ServerThread(config, embedder, demo=demo, exporters=exporters)
    try:
        yield server
    finally:
        server.stop()
