"""A backfill whose server is killed with SIGKILL midway resumes after a restart and embeds only what is
still missing: the rows committed before the kill are kept as they were."""

from __future__ import annotations

from pathlib import Path

from capreg.v1 import admin_pb2
from capreg_client import CapregClient
from sqlalchemy import select

from bench.common import ServerProcess
from registry.embedding.sentence import MINILM_NAME
from registry.store import tables as t
from registry.store.engine import make_engine, sqlite_url
from tests.support import make_agent, make_capability

AGENTS = 600
BATCH = 16
NOUNS = ["invoices", "contracts", "podcasts", "photos", "tickets", "shipments", "patients", "leases", "payrolls"]


def stored_vectors(data_dir: Path, space: str) -> dict[str, object]:
    """capability id -> created_at of its vector in the space, read from the database file itself."""
    engine = make_engine(sqlite_url(data_dir))
    try:
        with engine.connect() as conn:
            space_id = conn.execute(select(t.vector_spaces.c.id).where(t.vector_spaces.c.name == space)).scalar_one()
            vectors = t.capability_vectors.c
            rows = conn.execute(select(vectors.capability_id, vectors.created_at).where(vectors.space_id == space_id))
            return dict(rows.all())
    finally:
        engine.dispose()


def test_a_backfill_killed_midway_resumes_without_embedding_anything_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    agents = [
        make_agent(f"worker-{i}", make_capability("work", description=f"handles {NOUNS[i % 9]} for team {i}"))
        for i in range(AGENTS)
    ]
    first = ServerProcess(data)
    try:
        with CapregClient(first.target, api_key=first.api_key, timeout=120) as client:
            for start in range(0, AGENTS, 200):
                client.register_agents(agents[start : start + 200])
            client.create_space("retemplated", MINILM_NAME, "{description} ({name})")
            progress = client.backfill_space("retemplated", batch_size=BATCH)
            assert next(progress).done >= BATCH  # at least one batch committed
            first.process.kill()  # SIGKILL: no drain, no shutdown snapshot
            first.process.wait()
    finally:
        first.stop()
    before = stored_vectors(data, "retemplated")
    assert BATCH <= len(before) < AGENTS, "the kill came after the backfill had finished: nothing to resume"

    second = ServerProcess(data)
    try:
        with CapregClient(second.target, api_key=second.api_key, timeout=120) as client:
            steps = list(client.backfill_space("retemplated", batch_size=BATCH))
            assert steps[-1].state == admin_pb2.SPACE_STATE_READY
            assert steps[-1].done == AGENTS - len(before)  # only what was missing was embedded
            assert client.get_space("retemplated").capabilities_embedded == AGENTS
    finally:
        second.stop()
    after = stored_vectors(data, "retemplated")
    assert len(after) == AGENTS
    assert {cap: after[cap] for cap in before} == before  # rows committed before the kill were not rewritten
