"""Programmatic alembic: upgrade, downgrade and inspect the schema revision of a database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def head_revision(engine: Engine) -> str:
    head = ScriptDirectory.from_config(_config(engine)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, "downgrade", revision)


def migrate_to(engine: Engine, revision: str) -> str:
    """Upgrade or downgrade to `revision` ("head", "base" or an id); returns the direction taken."""
    script = ScriptDirectory.from_config(_config(engine))
    current = current_revision(engine)
    if revision == "head":
        upgrade(engine)
        return "upgrade"
    if revision == "base":
        downgrade(engine, "base")
        return "downgrade"
    known = [r.revision for r in script.walk_revisions()]
    if revision not in known:
        raise ValueError(f"unknown revision {revision!r}; known: head, base, {', '.join(known)}")
    ancestors = {r.revision for r in script.iterate_revisions(current, "base")} if current else set()
    if revision in ancestors:
        downgrade(engine, revision)
        return "downgrade"
    upgrade(engine, revision)
    return "upgrade"


def _run(engine: Engine, direction: str, revision: str) -> None:
    config = _config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        if direction == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)
