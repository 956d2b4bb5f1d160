"""Alembic environment: the connection comes from registry.store.migrate, never from a global."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from registry.store.tables import metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `capreg migrate`, which supplies the connection")
run_migrations(connection)
