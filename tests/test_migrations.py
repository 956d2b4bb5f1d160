"""Migrations upgrade an empty database to head and back down, on SQLite and PostgreSQL, and head
matches the table definitions exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from registry.store import migrate
from registry.store.engine import make_engine
from registry.store.tables import metadata
from tests import support

TABLES = {
    "tenants",
    "agents",
    "capabilities",
    "vector_spaces",
    "capability_vectors",
    "change_log",
    "policies",
    "budgets",
    "budget_usage",
    "budget_reservations",
    "api_keys",
    "audit_log",
    "outcomes",
    "agent_documents",
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    name = support.create_pg_database()
    request.addfinalizer(lambda: support.drop_pg_database(name))
    return support.pg_url(name)


def test_upgrade_to_head_then_down_to_base(empty_url: str) -> None:
    engine = make_engine(empty_url)
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == [], f"migrations and registry/store/tables.py disagree: {diff}"

    assert migrate.migrate_to(engine, "base") == "downgrade"
    assert migrate.current_revision(engine) is None
    assert not TABLES & set(inspect(engine).get_table_names())
    assert migrate.migrate_to(engine, "0001") == "upgrade"
    assert migrate.current_revision(engine) == "0001"
    engine.dispose()


def test_unknown_revision_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(ValueError, match="unknown revision"):
        migrate.migrate_to(engine, "nope")
