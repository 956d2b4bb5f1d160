"""Index snapshots: a restart loads the snapshot and replays the change log after it; a snapshot that is
damaged, made for another space or ahead of the database is refused with a reason and the index is rebuilt
from the stored vectors without embedding anything; a snapshot that cannot be written is reported and
retried while the server serves on; and a written snapshot reads back as an index that answers exactly as
the original did."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from capreg.v1 import agent_pb2
from capreg_client import CapregClient
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select, text

from bench.snapshot_load import as_format_1
from registry.cli.main import cli
from registry.domain.models import (
    AgentKind,
    AgentStatus,
    Capability,
    CatalogChange,
    CatalogEntry,
    Cost,
    DiscoverFilters,
    VectorSpace,
    Visibility,
)
from registry.embedding.base import Embedder
from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.files import file_sha256
from registry.index import snapshot
from registry.index.columns import constraint_mask
from registry.index.hnsw import HnswParams
from registry.index.snapshot import SnapshotInfo
from registry.index.space_index import PlannerParams, SpaceIndex
from registry.store import tables as t
from registry.store.engine import make_engine
from registry.store.notify import CHANNEL
from tests.support import ServerThread, make_agent, make_capability, running_server

TENANT = "snapshots"
# Each agent does one clearly different thing, so its own description finds it first.
DOES = {
    "poet": "Writes haiku poems about nature, rain and the changing seasons.",
    "translator": "Translates German legal contracts into English.",
    "transcriber": "Transcribes recorded podcast audio into written text.",
    "invoicer": "Extracts totals, dates and line items from scanned invoices.",
    "reviewer": "Reviews Python pull requests and points out bugs.",
    "forecaster": "Forecasts tomorrow's weather for any city.",
    "chef": "Suggests dinner recipes from the ingredients in your fridge.",
}
INVOICER_NOW = "Books train and flight tickets for business travel."


SPACE = "minilm-l6-v2"  # the vector space every test server starts with


def one(written: list[SnapshotInfo]) -> SnapshotInfo | None:
    """The serving space's snapshot from a write_now (the only live space in these tests), or None."""
    assert len(written) <= 1
    return written[0] if written else None


class CountingEmbedder:
    """The real model, counting what it is asked to embed."""

    def __init__(self, inner: Embedder):
        self._inner = inner
        self.model_name = inner.model_name
        self.model_revision = inner.model_revision
        self.weights_sha256 = inner.weights_sha256
        self.dim = inner.dim
        self._lock = threading.Lock()
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            self.calls += 1
        return self._inner.embed(texts)


@pytest.fixture
def counting(embedder: SentenceTransformerEmbedder) -> CountingEmbedder:
    return CountingEmbedder(embedder)


def text_agent(name: str, description: str = "") -> agent_pb2.Agent:
    cap = make_capability(name, description=description or DOES[name], examples=[], tags=[name])
    return make_agent(name, cap, tenant=TENANT)


def found(client: CapregClient, text: str) -> list[str]:
    """Every agent Discover returns for `text`, best first."""
    return [m.agent_name for m in client.discover(text, tenant=TENANT, top_k=50).matches]


def every_name(client: CapregClient) -> set[str]:
    return {name for text in (*DOES.values(), INVOICER_NOW) for name in found(client, text)}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


@contextmanager
def serve(data_dir: Path, database_url: str, embedder: Embedder, **settings: Any) -> Iterator[ServerThread]:
    """`running_server`, which on PostgreSQL also waits until the new server's change listener is connected.

    Stopping a server while its listener is still connecting can hang `App.stop()` for good: the listener's
    first wake lands just as `ChangeFollower.stop()` cancels the follower, and `asyncio.wait_for` on Python
    3.11 swallows that cancellation, so the follower loops on. Servers here are often stopped within
    milliseconds of starting; this keeps them off that race (a bug of the follower, not of snapshots)."""
    engine = None if database_url.startswith("sqlite") else make_engine(database_url)
    try:
        before = _listeners(engine) if engine is not None else set()
        with running_server(data_dir, database_url, embedder, **settings) as server:
            if engine is not None:
                wait_until(lambda: bool(_listeners(engine) - before))
            yield server
    finally:
        if engine is not None:
            engine.dispose()


def _listeners(engine: Engine) -> set[int]:
    """The backends LISTENing for capreg's changes in this database."""
    with engine.connect() as conn:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = :listen"
        return set(conn.execute(text(query), {"listen": f"LISTEN {CHANNEL}"}).scalars())


def index_digest(server: ServerThread) -> str:
    async def digest() -> str:
        async with server.app.follower.lock:  # one consistent position
            return server.app.serving.index.digest()

    return server.run(digest())


def database_digest(server: ServerThread) -> str:
    return server.app.store.index_digest(server.app.serving.space.id)


def current(root: Path) -> Path:
    """The directory CURRENT names."""
    return root / (root / snapshot.CURRENT).read_text().strip()


def reloaded(server: ServerThread) -> SpaceIndex:
    """The server's CURRENT snapshot, read back from disk."""
    app = server.app
    return snapshot.load(app.snapshots.directory(SPACE), app.serving.space, SpaceIndex(app.serving.space.dim))


def status_json(server: ServerThread) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--json", "--target", server.target], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.output)
    return found


# -- restarts ------------------------------------------------------------------------------------------


def test_a_restart_loads_the_snapshot_then_replays_the_log_after_its_watermark(
    database_url: str, tmp_path: Path, counting: CountingEmbedder
) -> None:
    data = tmp_path / "data"
    with serve(data, database_url, counting, snapshot_interval_s=0) as first:
        with CapregClient(first.target, timeout=30) as client:
            for name in ("poet", "translator", "transcriber", "invoicer"):
                client.register_agent(text_agent(name))
            info = one(first.run(first.app.snapshots.write_now()))
            assert info is not None and info.watermark == first.app.store.watermark() and info.rows == 4
            assert one(first.run(first.app.snapshots.write_now())) is None  # nothing changed since
            # After the snapshot: new agents, a status change, a removal and a changed text.
            client.register_agent(text_agent("reviewer"))
            client.register_agent(text_agent("forecaster"))
            client.update_agent_status("translator", "draining", tenant=TENANT)
            client.deregister_agent("transcriber", tenant=TENANT)
            client.register_agent(text_agent("invoicer", INVOICER_NOW))
        head = first.app.store.watermark()
        root = first.app.snapshots.directory(SPACE)
    assert current(root) == info.path  # interval 0: no snapshot at shutdown either
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            after = conn.execute(select(func.count()).where(t.change_log.c.seq > info.watermark)).scalar_one()
    finally:
        engine.dispose()
    counting.calls = 0
    with serve(data, database_url, counting, snapshot_interval_s=0) as second:
        assert counting.calls == 0  # nothing embedded to start, not even the changed text
        startup = second.app.startup
        assert (startup.source, startup.reason, startup.watermark) == ("snapshot", "", info.watermark)
        assert second.app.follower.position == head
        assert second.app.follower.applied == after  # the log after the watermark, not all of it
        assert index_digest(second) == database_digest(second)
        with CapregClient(second.target, timeout=30) as client:
            for name in ("poet", "reviewer", "forecaster"):
                assert found(client, DOES[name])[0] == name
            assert found(client, INVOICER_NOW)[0] == "invoicer"
            assert every_name(client) == {"poet", "reviewer", "forecaster", "invoicer"}  # not drained nor gone
            shown = client.index_status()
            assert shown.startup_source == "snapshot" and shown.snapshot_watermark == info.watermark
            assert shown.watermark == shown.log_head == head


def test_the_snapshot_written_at_shutdown_is_loaded_with_nothing_to_replay(
    database_url: str, tmp_path: Path, counting: CountingEmbedder
) -> None:
    data = tmp_path / "data"
    with serve(data, database_url, counting, snapshot_interval_s=3600) as first:
        with CapregClient(first.target, timeout=30) as client:
            client.register_agent(text_agent("poet"))
            client.register_agent(text_agent("chef"))
        assert first.app.snapshots.written == 0  # the periodic one is an hour away
        head = first.app.store.watermark()
    assert first.app.snapshots.written == 1 and first.app.snapshots.saved_watermark(SPACE) == head
    counting.calls = 0
    with serve(data, database_url, counting, snapshot_interval_s=3600) as second:
        assert counting.calls == 0
        assert (second.app.startup.source, second.app.startup.watermark) == ("snapshot", head)
        assert second.app.follower.applied == 0
        assert index_digest(second) == database_digest(second)
        assert one(second.run(second.app.snapshots.write_now())) is None  # loaded at this watermark already
        with CapregClient(second.target, timeout=30) as client:
            assert found(client, DOES["chef"])[0] == "chef" and found(client, DOES["poet"])[0] == "poet"


def test_snapshots_are_written_periodically_and_only_the_newest_two_are_kept(
    database_url: str, tmp_path: Path, counting: CountingEmbedder
) -> None:
    with (
        serve(tmp_path / "data", database_url, counting, snapshot_interval_s=0.05) as server,
        CapregClient(server.target, timeout=30) as client,
    ):
        keeper = server.app.snapshots
        for name in ("poet", "chef", "forecaster"):
            token = client.register_agent(text_agent(name)).consistency_token
            wait_until(lambda: keeper.saved_watermark(SPACE) == token)  # noqa: B023  # called at once
            assert current(keeper.directory(SPACE)).name.startswith(f"{token:012d}-")
        assert keeper.written >= 3 and keeper.last_error == ""
        kept = sorted(p.name for p in keeper.directory(SPACE).iterdir() if p.is_dir())
        assert len(kept) == 2 and current(keeper.directory(SPACE)).name == kept[-1]
        assert reloaded(server).digest() == index_digest(server) == database_digest(server)


def test_with_interval_zero_nothing_is_ever_written_and_the_next_start_rebuilds(
    database_url: str, tmp_path: Path, counting: CountingEmbedder
) -> None:
    data = tmp_path / "data"
    with serve(data, database_url, counting, snapshot_interval_s=0) as first:
        with CapregClient(first.target, timeout=30) as client:
            client.register_agent(text_agent("poet"))
        root = first.app.snapshots.directory(SPACE)
    assert not root.exists() and first.app.snapshots.written == 0
    counting.calls = 0
    with serve(data, database_url, counting, snapshot_interval_s=0) as second:
        assert counting.calls == 0
        assert second.app.startup.source == "database" and second.app.startup.reason.startswith("no snapshot")
        assert index_digest(second) == database_digest(second)


# -- snapshots that must be refused ----------------------------------------------------------------------


@dataclass
class Written:
    """A snapshot the first server wrote, and what the test needs to spoil it."""

    server: ServerThread
    root: Path
    path: Path
    database_url: str
    tokens: dict[str, int]  # agent name -> the token of its registration


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _for_another(**identity: Any) -> Callable[[Written], object]:
    """Replace CURRENT by a sound snapshot of the same index made for another space."""

    def spoil(w: Written) -> object:
        app = w.server.app
        return snapshot.write(app.serving.index, replace(app.serving.space, **identity), w.root)

    return spoil


def _edit_meta(edit: Callable[[str, Written], str]) -> Callable[[Written], None]:
    """Change meta.json into other valid JSON, as a stray edit or a bit flip in a digit could."""

    def spoil(w: Written) -> None:
        meta = w.path / "meta.json"
        meta.write_text(edit(meta.read_text(), w))

    return spoil


def _resealed(**changes: Any) -> Callable[[Written], None]:
    """meta.json changed and given a matching checksum, as a capreg of another snapshot layout writes it."""

    def spoil(w: Written) -> None:
        meta = json.loads((w.path / "meta.json").read_text())
        del meta["checksum"]
        meta |= changes
        meta["checksum"] = snapshot._meta_checksum(meta)
        (w.path / "meta.json").write_text(json.dumps(meta))

    return spoil


def _skip_ahead(text: str, w: Written) -> str:
    """Claim the snapshot holds the change after it: loading it would miss that change for good."""
    meta = json.loads(text)
    meta["watermark"] = w.tokens["invoicer"]
    return json.dumps(meta)


def _restore_older(w: Written) -> None:
    """The database goes back to the state it had after the second registration (an older backup)."""
    engine = make_engine(w.database_url)
    kept = w.tokens["translator"]
    try:
        with engine.begin() as conn:
            conn.execute(delete(t.agents).where(t.agents.c.name.in_(["transcriber", "invoicer"])))
            conn.execute(delete(t.change_log).where(t.change_log.c.seq > kept))
    finally:
        engine.dispose()


ALL = {"poet", "translator", "transcriber", "invoicer"}
SPOILERS: dict[str, tuple[Callable[[Written], object], str, set[str]]] = {
    # name: (how, what the reason says, the agents the database still has)
    "vectors-truncated": (lambda w: _truncate(w.path / "vectors.npy"), "does not match its checksum", ALL),
    "graph-truncated": (lambda w: _truncate(w.path / "graph.bin"), "does not match its checksum", ALL),
    "entries-truncated": (lambda w: _truncate(w.path / "entries.json"), "does not match its checksum", ALL),
    "vectors-flipped": (lambda w: _flip(w.path / "vectors.npy"), "vectors.npy does not match its checksum", ALL),
    "graph-flipped": (lambda w: _flip(w.path / "graph.bin"), "graph.bin does not match its checksum", ALL),
    "entries-flipped": (lambda w: _flip(w.path / "entries.json"), "entries.json does not match its checksum", ALL),
    "another-row-layout": (_resealed(entry_fields=["id", "name"]), "the snapshot's rows hold", ALL),
    "a-newer-format": (_resealed(format=3), "format 3 is not one this capreg reads", ALL),
    "meta-flipped": (lambda w: _flip(w.path / "meta.json"), "meta.json", ALL),
    "meta-watermark-altered": (_edit_meta(_skip_ahead), "meta.json does not match its checksum", ALL),
    "meta-key-altered": (_edit_meta(lambda text, w: text.replace('"rows"', '"rowz"')), "meta.json does not", ALL),
    "graph-missing": (lambda w: (w.path / "graph.bin").unlink(), "graph.bin is missing", ALL),
    "meta-missing": (lambda w: (w.path / "meta.json").unlink(), "meta.json is unreadable", ALL),
    "current-garbage": (lambda w: (w.root / "CURRENT").write_bytes(b"\xff\xfe\x00garbage\n"), "CURRENT", ALL),
    "current-elsewhere": (lambda w: (w.root / "CURRENT").write_text("../../.."), "CURRENT does not name", ALL),
    "current-names-nothing": (lambda w: (w.root / "CURRENT").write_text("000000000007-1"), "unreadable", ALL),
    "another-space": (_for_another(name="other-space"), "space='other-space'", ALL),
    "another-dim": (_for_another(dim=512), "dim=512", ALL),
    "another-model": (_for_another(model="another-model"), "model='another-model'", ALL),
    "ahead-of-the-database": (_restore_older, "restored from an older backup", {"poet", "translator"}),
}


@pytest.mark.parametrize("spoiled", sorted(SPOILERS))
def test_a_bad_snapshot_is_refused_and_the_index_is_rebuilt_without_embedding(
    database_url: str, tmp_path: Path, counting: CountingEmbedder, spoiled: str
) -> None:
    spoil, reason, remaining = SPOILERS[spoiled]
    data = tmp_path / "data"
    with (
        serve(data, database_url, counting, snapshot_interval_s=0) as first,
        CapregClient(first.target, timeout=30) as client,
    ):
        tokens = {
            name: client.register_agent(text_agent(name)).consistency_token
            for name in ("poet", "translator", "transcriber")
        }
        info = one(first.run(first.app.snapshots.write_now()))
        assert info is not None and info.watermark == tokens["transcriber"]
        tokens["invoicer"] = client.register_agent(text_agent("invoicer")).consistency_token  # after it
    spoil(Written(first, info.path.parent, info.path, database_url, tokens))

    counting.calls = 0
    with serve(data, database_url, counting, snapshot_interval_s=0) as second:
        assert counting.calls == 0  # rebuilt from the stored vectors
        startup = second.app.startup
        assert startup.source == "database" and reason in startup.reason, startup.reason
        assert index_digest(second) == database_digest(second)
        with CapregClient(second.target, timeout=30) as client:
            assert client.index_status().startup_reason == startup.reason
            for name in remaining:
                assert found(client, DOES[name])[0] == name
            assert every_name(client) == remaining
            # It serves on: writes reach Discover, and the next snapshot is sound.
            token = client.register_agent(text_agent("chef")).consistency_token
            assert found(client, DOES["chef"])[0] == "chef"
        written = one(second.run(second.app.snapshots.write_now()))
        assert written is not None and written.watermark == token and second.app.snapshots.last_error == ""
        assert reloaded(second).digest() == index_digest(second) == database_digest(second)


# -- snapshots that cannot be written --------------------------------------------------------------------


def _file_at_root(root: Path) -> Callable[[], None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("not a directory")
    return root.unlink


def _directory_at_current(root: Path) -> Callable[[], None]:
    (root / snapshot.CURRENT).mkdir(parents=True)
    return (root / snapshot.CURRENT).rmdir


OBSTACLES: dict[str, Callable[[Path], Callable[[], None]]] = {
    "file-where-the-directory-goes": _file_at_root,
    "directory-where-current-goes": _directory_at_current,
}


@pytest.mark.parametrize("obstacle", sorted(OBSTACLES))
def test_a_snapshot_that_cannot_be_written_is_reported_and_the_server_serves_on(
    database_url: str, tmp_path: Path, counting: CountingEmbedder, obstacle: str
) -> None:
    with (
        serve(tmp_path / "data", database_url, counting, snapshot_interval_s=0) as server,
        CapregClient(server.target, timeout=30) as client,
    ):
        keeper = server.app.snapshots
        client.register_agent(text_agent("poet"))
        remove = OBSTACLES[obstacle](keeper.directory(SPACE))
        with pytest.raises(OSError):
            one(server.run(keeper.write_now()))
        assert keeper.last_error and keeper.failed == 1 and keeper.written == 0
        shown = status_json(server)
        assert shown["snapshot_error"] == keeper.last_error
        table = CliRunner().invoke(cli, ["status", "--target", server.target], catch_exceptions=False)
        assert table.exit_code == 0 and "snapshot error" in table.output

        # Discover and writes go on.
        assert found(client, DOES["poet"])[0] == "poet"
        token = client.register_agent(text_agent("chef")).consistency_token
        assert found(client, DOES["chef"])[0] == "chef"
        with pytest.raises(OSError):
            one(server.run(keeper.write_now()))
        assert keeper.failed == 2

        remove()
        written = one(server.run(keeper.write_now()))
        assert written is not None and written.watermark == token
        assert keeper.last_error == "" and keeper.written == 1
        shown = status_json(server)
        assert shown.get("snapshot_error", "") == "" and int(shown["snapshot_watermark"]) == token
        assert reloaded(server).digest() == index_digest(server) == database_digest(server)


def test_periodic_snapshots_that_fail_are_retried_until_the_disk_is_back(
    database_url: str, tmp_path: Path, counting: CountingEmbedder
) -> None:
    data = tmp_path / "data"
    remove = _file_at_root(data / "snapshots" / "minilm-l6-v2")  # the default vector space's directory
    with (
        serve(data, database_url, counting, snapshot_interval_s=0.05) as server,
        CapregClient(server.target, timeout=30) as client,
    ):
        keeper = server.app.snapshots
        client.register_agent(text_agent("poet"))
        wait_until(lambda: keeper.failed >= 3)
        assert keeper.last_error and keeper.written == 0
        token = client.register_agent(text_agent("chef")).consistency_token
        assert found(client, DOES["chef"])[0] == "chef"
        remove()
        wait_until(lambda: keeper.saved_watermark(SPACE) == token)
        assert keeper.last_error == ""
    assert server.app.snapshots.written >= 1


def test_a_failure_without_a_message_is_still_reported(
    database_url: str, tmp_path: Path, counting: CountingEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> snapshot.SnapshotInfo:
        raise OSError()

    with serve(tmp_path / "data", database_url, counting, snapshot_interval_s=0) as server:
        monkeypatch.setattr(snapshot, "write", full_disk)
        with pytest.raises(OSError):
            one(server.run(server.app.snapshots.write_now()))
        assert server.app.snapshots.last_error == "OSError"
        assert status_json(server)["snapshot_error"] == "OSError"


def test_a_shutdown_snapshot_that_fails_lets_the_server_stop_and_the_next_start_rebuilds(
    database_url: str, tmp_path: Path, counting: CountingEmbedder
) -> None:
    data = tmp_path / "data"
    with serve(data, database_url, counting, snapshot_interval_s=3600) as first:
        with CapregClient(first.target, timeout=30) as client:
            client.register_agent(text_agent("poet"))
        remove = _file_at_root(first.app.snapshots.directory(SPACE))
    assert first.app.snapshots.failed == 1
    remove()
    with serve(data, database_url, counting, snapshot_interval_s=3600) as second:
        assert second.app.startup.source == "database"
        assert index_digest(second) == database_digest(second)


# -- the format, property-tested ---------------------------------------------------------------------------

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SLOTS = 12  # capability ids cap-0 .. cap-11
AGENTS = 4


def _entry(slot: int, agent: int, vector: npt.NDArray[np.float32] | None, attrs: dict[str, Any]) -> CatalogEntry:
    stamp = EPOCH + timedelta(microseconds=attrs["micros"])
    capability = Capability(
        name=f"cap-{slot % 5}",
        version=f"1.{slot}.0",
        description=f"capability {slot} ü",
        examples=(f"example {slot}",),
        tags=tuple(attrs["tags"]),
        input_modes=("text",),
        output_modes=("text", "image")[: 1 + slot % 2],
        cost=Cost(attrs["cost"], attrs["cost"] / 3, 0.1),
        latency_p50_ms=attrs["latency"],
        quality_prior=attrs["quality"],
        regions=tuple(attrs["regions"]),
        id=f"cap-{slot}",
        created_at=EPOCH,
        updated_at=stamp,
    )
    return CatalogEntry(
        capability=capability,
        agent_id=f"agent-{agent}",
        agent_name=f"agent {agent}",
        tenant=attrs["tenant"],
        kind=attrs["kind"],
        endpoint=f"https://agent-{agent}.example.com",
        labels=attrs["labels"],
        status=attrs["status"],
        vector=vector,
        visibility=attrs["visibility"],
        shared_with=tuple(attrs["shared_with"]),
        lease_expires_at=attrs["lease"],
        text_sha256=f"{slot:02d}" + "ab" * 31 if vector is not None else attrs["hash"],
    )


TENANTS = ("t1", "t2", "t3")
attributes = st.fixed_dictionaries(
    {
        "tags": st.lists(st.sampled_from(("a", "b", "c")), unique=True, max_size=3),
        "regions": st.lists(st.sampled_from(("eu", "us")), unique=True, max_size=2),
        "cost": st.sampled_from((0.0, 0.001, 0.5, 2.0)),
        "latency": st.sampled_from((10.0, 250.0, 5000.0)),
        "quality": st.sampled_from((0.0, 0.5, 0.9)),
        "tenant": st.sampled_from(TENANTS),
        "kind": st.sampled_from(tuple(AgentKind)),
        "status": st.sampled_from(tuple(AgentStatus)),
        "visibility": st.sampled_from(tuple(Visibility)),
        "shared_with": st.lists(st.sampled_from(TENANTS), unique=True, max_size=2),
        "labels": st.dictionaries(st.sampled_from(("team", "env")), st.sampled_from(("x", "y")), max_size=2),
        "lease": st.sampled_from((float("inf"), 1.0e9, 4.0e9)),  # none, expired, far away
        "micros": st.integers(0, 10**12),
        "hash": st.sampled_from(("", "f" * 64)),
    }
)


def small_vectors(dim: int) -> st.SearchStrategy[npt.NDArray[np.float32]]:
    """Small integer vectors, never zero: deterministic, with ties on purpose."""
    return st.lists(st.integers(-3, 3), min_size=dim, max_size=dim).map(
        lambda values: np.array([*values[:-1], values[-1] or 1], dtype=np.float32)
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, bool, list[tuple[str, Any]]]:
    """A dimension, whether to force HNSW, and a list of operations on an index."""
    dim = draw(st.integers(8, 16))
    vectors = small_vectors(dim)
    slot, agent = st.integers(0, SLOTS - 1), st.integers(0, AGENTS - 1)
    upsert = st.tuples(st.just("upsert"), slot, agent, vectors, attributes)
    attrs_only = st.tuples(st.just("attrs"), slot, attributes)
    remove = st.tuples(st.just("remove"), st.lists(slot, max_size=3))
    agent_entries = st.lists(st.tuples(slot, vectors, attributes), max_size=3, unique_by=lambda e: e[0])
    replace_agent = st.tuples(st.just("replace_agent"), agent, agent_entries)
    bulk = st.lists(st.tuples(slot, agent, vectors, attributes), max_size=8, unique_by=lambda e: e[0])
    operations: list[tuple[str, Any]] = list(
        draw(st.lists(st.one_of(upsert, attrs_only, remove, replace_agent), max_size=25))
    )
    return dim, draw(st.booleans()), [("bulk", draw(bulk)), *operations]


def play(index: SpaceIndex, operations: list[tuple[str, Any]]) -> None:
    owner: dict[int, int] = {}  # slot -> agent, so a capability id never moves between agents
    for seq, (op, *args) in enumerate(operations, start=1):
        if op == "bulk":
            entries = []
            for slot, agent, vector, attrs in args[0]:
                owner[slot] = agent
                entries.append(_entry(slot, agent, vector, attrs))
            index.bulk_load(entries, seq)
        elif op == "upsert":
            slot, agent, vector, attrs = args
            owner.setdefault(slot, agent)
            if f"cap-{slot}" not in index.row_of:
                owner[slot] = agent
            index.apply(CatalogChange(seq, upserts=(_entry(slot, owner[slot], vector, attrs),)))
        elif op == "attrs":
            slot, attrs = args
            if f"cap-{slot}" in index.row_of:  # an attribute-only change needs the row
                index.apply(CatalogChange(seq, upserts=(_entry(slot, owner[slot], None, attrs),)))
        elif op == "remove":
            index.apply(CatalogChange(seq, removed=tuple(f"cap-{slot}" for slot in args[0])))
        else:
            agent, wanted = args
            entries = []
            for slot, vector, attrs in wanted:
                if f"cap-{slot}" in index.row_of and owner[slot] != agent:
                    continue  # another agent's capability
                owner[slot] = agent
                entries.append(_entry(slot, agent, vector, attrs))
            index.replace_agent(f"agent-{agent}", entries, seq)


FILTERS = st.builds(
    DiscoverFilters,
    kinds=st.lists(st.sampled_from(tuple(AgentKind)), unique=True, max_size=2),
    tags_all=st.lists(st.sampled_from(("a", "b")), unique=True, max_size=1),
    tags_any=st.lists(st.sampled_from(("a", "b", "c")), unique=True, max_size=2),
    regions=st.lists(st.sampled_from(("eu", "us")), unique=True, max_size=1),
    labels=st.dictionaries(st.sampled_from(("team", "env")), st.sampled_from(("x", "y")), max_size=1),
    max_cost_usd=st.none() | st.sampled_from((0.01, 1.0)),
    max_latency_ms=st.none() | st.just(300.0),
    min_quality=st.none() | st.just(0.4),
    capability_name=st.sampled_from(("", "cap-1")),
)
QUERIES = st.lists(
    st.tuples(st.sampled_from(TENANTS), FILTERS, st.integers(1, SLOTS + 2), st.integers(0, 2**32 - 1)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), queries=QUERIES)
def test_a_snapshot_reads_back_as_an_index_that_answers_exactly_as_the_original(
    tmp_path_factory: pytest.TempPathFactory,
    history: tuple[int, bool, list[tuple[str, Any]]],
    queries: list[tuple[str, DiscoverFilters, int, int]],
) -> None:
    dim, force_hnsw, operations = history
    hnsw = HnswParams(m=8, ef_construction=40, ef_search=16, initial_capacity=4)
    planner = PlannerParams(exact_always_rows=0, exact_max_rows=0) if force_hnsw else PlannerParams()
    original = SpaceIndex(dim, hnsw, planner)
    play(original, operations)
    space = VectorSpace("prop", "model", "rev", "0" * 64, "{name}", dim, id=7)
    root = tmp_path_factory.mktemp("snapshot")
    info = snapshot.write(original, space, root)
    assert (info.watermark, info.rows) == (original.watermark, original.size)

    loaded = snapshot.load(root, space, SpaceIndex(dim, hnsw, planner))
    assert_same_index(loaded, original, queries)
    as_format_1(info.path)  # what an older capreg wrote: read as well, so an upgrade does not rebuild
    assert_same_index(snapshot.load(root, space, SpaceIndex(dim, hnsw, planner)), original, queries)


def assert_same_index(
    loaded: SpaceIndex, original: SpaceIndex, queries: list[tuple[str, DiscoverFilters, int, int]]
) -> None:
    dim = original.dim
    assert loaded.watermark == original.watermark
    assert (loaded.size, loaded.live_count) == (original.size, original.live_count)
    assert loaded.digest() == original.digest()
    assert loaded.entries == original.entries
    assert np.array_equal(loaded.vectors[: loaded.size], original.vectors[: original.size])
    size = original.size
    for tenant, filters, k, seed in queries:
        query = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        masks = [
            constraint_mask(index.columns, size, tenant, filters, 1000, 1000, now=2.0e9) for index in (original, loaded)
        ]
        assert np.array_equal(masks[0][0], masks[1][0]) and masks[0][1] == masks[1][1]
        want, got = original.search(query, k, masks[0][0]), loaded.search(query, k, masks[1][0])
        assert got.plan == want.plan
        assert np.array_equal(got.rows, want.rows) and np.array_equal(got.similarities, want.similarities)


def test_entries_that_do_not_parse_are_refused_even_with_a_matching_checksum(tmp_path: Path) -> None:
    """The entries are parsed while the files are hashed: whatever the parser raises (a RecursionError from
    nested brackets included) must become a SnapshotError, so start-up rebuilds instead of crashing."""
    index = SpaceIndex(8)
    attrs = {"tags": [], "regions": [], "cost": 0.0, "latency": 10.0, "quality": 0.5, "tenant": "t1",
             "kind": AgentKind.TOOL, "status": AgentStatus.ACTIVE, "visibility": Visibility.PRIVATE,
             "shared_with": [], "labels": {}, "lease": float("inf"), "micros": 0, "hash": ""}  # fmt: skip
    index.apply(CatalogChange(1, (_entry(0, 0, np.ones(8, dtype=np.float32), attrs),)))
    space = VectorSpace("prop", "model", "rev", "0" * 64, "{name}", 8, id=7)
    info = snapshot.write(index, space, tmp_path)
    for garbage in (b"[" * 200_000, b'[["only", "two"]]', b'{"not": "an array"}', b"[1, 2, 3]", b"\xff\xfe"):
        (info.path / "entries.json").write_bytes(garbage)
        meta = json.loads((info.path / "meta.json").read_text())
        del meta["checksum"]
        meta["files"]["entries.json"] = file_sha256(info.path / "entries.json")
        meta["checksum"] = snapshot._meta_checksum(meta)
        (info.path / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(snapshot.SnapshotError, match="does not parse"):
            snapshot.load(tmp_path, space, SpaceIndex(8))
