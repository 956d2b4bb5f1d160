"""Fixtures shared by the suite: both databases, the real embedding model, real servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from capreg_client import CapregClient
from sqlalchemy import Engine

from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path
from tests import support
from tests.pg_instance import PgInstance, started

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One PostgreSQL database for the session, migrated to head. Unreachable means failure, not skip."""
    try:
        name = support.create_pg_database()
    except Exception as exc:  # any connection problem
        pytest.fail(
            f"PostgreSQL at {support.PG_ADMIN_URL} is unreachable ({exc}); start it or set CAPREG_TEST_PG_URL",
            pytrace=False,
        )
    url = support.pg_url(name)
    support.migrated_engine(url).dispose()
    yield url
    support.drop_pg_database(name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database at the head revision, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'capreg.db'}"
        support.migrated_engine(url).dispose()
        yield url
    else:
        url = request.getfixturevalue("pg_database")
        engine = support.migrated_engine(url)
        support.empty_tables(engine)
        engine.dispose()
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = support.migrated_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2, loaded once."""
    return SentenceTransformerEmbedder(bundled_model_path())


@pytest.fixture
def server(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[support.ServerThread]:
    with support.running_server(tmp_path / "data", database_url, embedder) as running:
        yield running


@pytest.fixture
def client(server: support.ServerThread) -> Iterator[CapregClient]:
    with CapregClient(server.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def demo_server(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[support.ServerThread]:
    """A server with the demo catalog, on the embedded SQLite, shared by read-only tests."""
    data = tmp_path_factory.mktemp("demo")
    with support.running_server(data, f"sqlite:///{data / 'capreg.db'}", embedder, demo=True) as running:
        yield running


@pytest.fixture
def demo_client(demo_server: support.ServerThread) -> Iterator[CapregClient]:
    with CapregClient(demo_server.target, timeout=30) as c:
        yield c


@pytest.fixture
def private_pg() -> Iterator[PgInstance]:
    """A private PostgreSQL cluster of this test's own, to stop, kill and restart. Fails, never skips."""
    try:
        instance = started()
    except Exception as exc:
        pytest.fail(f"cannot run a private PostgreSQL cluster for fault tests: {exc}", pytrace=False)
    try:
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of the test's own, migrated to head, dropped afterwards (for tests that run
    servers as child processes, which must not share the session database)."""
    name = support.create_pg_database()
    try:
        url = support.pg_url(name)
        support.migrated_engine(url).dispose()
        yield url
    finally:
        support.drop_pg_database(name)
