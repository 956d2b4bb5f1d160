"""Rolling out a new vector space under live traffic: create -> backfill -> promote -> rollback -> promote
-> retire with Discover running throughout, a backfill stopped midway that resumes, shadow traffic,
comparisons, and a promotion seen by another server process through the change log."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from capreg.v1 import admin_pb2
from capreg_client import CapregClient, CapregError
from click.testing import CliRunner
from sqlalchemy import select

from registry.cli.main import cli
from registry.embedding import models
from registry.embedding.sentence import MINILM_NAME, SentenceTransformerEmbedder
from registry.store import tables as t
from registry.store.engine import make_engine
from tests import support
from tests.support import ServerThread, make_agent, make_capability, running_server

STATIC = "capreg/static-minilm-l6-v2-256"
OLD = "minilm-l6-v2"  # the space every server starts with
SKILLS = {
    "translator": "Translates documents between English, German and French.",
    "summarizer": "Summarizes long reports into a few bullet points.",
    "sql-writer": "Writes SQL queries for a PostgreSQL database from a question.",
    "image-captioner": "Describes what is in a photo in one sentence.",
    "weather": "Gives the weather forecast for a city.",
    "calculator": "Evaluates arithmetic and algebra expressions.",
}
TASKS = [
    "translate this contract into German",
    "summarize the quarterly report",
    "write a query that counts orders per customer",
    "what is in this picture",
    "will it rain in Paris tomorrow",
    "what is 17 times 23",
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static model, distilled once for the session."""
    directory = tmp_path_factory.mktemp("models")
    models.distill(STATIC, directory)
    return directory


@pytest.fixture
def server(
    database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder, models_dir: Path
) -> Iterator[ServerThread]:
    with running_server(tmp_path / "data", database_url, embedder, models_dir=models_dir) as running:
        with CapregClient(running.target) as client:
            for name, description in SKILLS.items():
                client.register_agent(make_agent(name, make_capability(name, description=description)))
        yield running


class Traffic:
    """Text Discovers in a loop on their own thread, recording which space answered each, and failures."""

    def __init__(self, target: str):
        self._client = CapregClient(target, timeout=30)
        self.spaces: Counter[str] = Counter()
        self.errors: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._client.close()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                answer = self._client.discover(TASKS[i % len(TASKS)], top_k=3)
                self.spaces[answer.vector_space] += 1
                if not answer.matches:
                    self.errors.append(f"an empty answer from {answer.vector_space}")
            except CapregError as error:
                self.errors.append(f"{error.code.name}: {error}")
            self.answered += 1
            i += 1

    def wait_for_more(self, n: int = 5) -> None:
        """Until the traffic has made `n` more calls (so every step is crossed by live requests)."""
        target, deadline = self.answered + n, time.monotonic() + 30
        while self.answered < target:
            assert time.monotonic() < deadline, "the traffic stalled"
            time.sleep(0.01)


def test_a_full_rollout_under_traffic_fails_no_request(server: ServerThread) -> None:
    with CapregClient(server.target, timeout=120) as admin, Traffic(server.target) as traffic:
        created = admin.create_space("static", STATIC, "{name}: {description} Examples: {examples}")
        assert created.state == admin_pb2.SPACE_STATE_BUILDING and created.dim == 256
        assert created.capabilities_total == len(SKILLS) and created.capabilities_embedded == 0
        # Registered while the space builds: embedded into it too, so nothing is missed at the switch.
        admin.register_agent(make_agent("poet", make_capability("write-haiku", description="Writes haiku poems.")))
        traffic.wait_for_more()
        steps = list(admin.backfill_space("static", batch_size=2))
        assert steps[-1].state == admin_pb2.SPACE_STATE_READY and sum(1 for s in steps if s.done) >= 3
        assert admin.get_space("static").capabilities_embedded == len(SKILLS) + 1
        traffic.wait_for_more()
        assert admin.promote_space("static").state == admin_pb2.SPACE_STATE_SERVING
        answer = admin.discover("write a haiku about autumn", top_k=1)
        assert answer.vector_space == "static" and answer.matches[0].agent_name == "poet"
        traffic.wait_for_more()
        assert admin.rollback_space().name == OLD
        assert admin.discover("write a haiku", top_k=1).vector_space == OLD
        traffic.wait_for_more()
        assert admin.promote_space("static").previous_serving == OLD
        traffic.wait_for_more()
        retired = admin.retire_space(OLD)
        assert retired.state == admin_pb2.SPACE_STATE_RETIRED and not retired.live_here
        traffic.wait_for_more()
        with pytest.raises(CapregError) as refused:
            admin.rollback_space()  # the space it would return to is gone
        assert refused.value.code.name == "FAILED_PRECONDITION"
    assert traffic.errors == []
    assert set(traffic.spaces) == {OLD, "static"} and traffic.answered == sum(traffic.spaces.values())
    with pytest.raises(CapregError) as pinned:  # a retired space answers no more
        admin_discover_pinned(server.target, OLD)
    assert pinned.value.code.name == "NOT_FOUND"


def admin_discover_pinned(target: str, space: str) -> None:
    with CapregClient(target) as client:
        client.discover("anything", space=space)


def test_a_stopped_backfill_resumes_without_embedding_anything_twice(
    database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder, models_dir: Path
) -> None:
    data = tmp_path / "data"
    with (
        running_server(data, database_url, embedder, models_dir=models_dir) as first,
        CapregClient(first.target, timeout=60) as client,
    ):
        for name, description in SKILLS.items():
            client.register_agent(make_agent(name, make_capability(name, description=description)))
        client.create_space("static", STATIC, "{name}: {description}")
        progress = client.backfill_space("static", batch_size=2)
        assert next(progress).done == 2
        progress.close()  # type: ignore[attr-defined]  # the caller goes away: the backfill stops
        space_id = first.app.spaces.get("static").space.id
    # Read what the first run left only once its server has stopped: the batch in hand when the caller went
    # away may still have landed after the close.
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            first_rows = dict(
                conn.execute(
                    select(t.capability_vectors.c.capability_id, t.capability_vectors.c.created_at).where(
                        t.capability_vectors.c.space_id == space_id
                    )
                ).all()
            )
    finally:
        engine.dispose()
    done_before = len(first_rows)
    assert 2 <= done_before < len(SKILLS)
    with running_server(data, database_url, embedder, models_dir=models_dir) as second:  # a restart
        with CapregClient(second.target, timeout=60) as client:
            steps = list(client.backfill_space("static", batch_size=2))
            assert steps[-1].done == len(SKILLS) - done_before  # only what was missing was embedded
            assert steps[-1].state == admin_pb2.SPACE_STATE_READY
        with second.app.engine.connect() as conn:
            after = dict(
                conn.execute(
                    select(t.capability_vectors.c.capability_id, t.capability_vectors.c.created_at).where(
                        t.capability_vectors.c.space_id == second.app.spaces.get("static").space.id
                    )
                ).all()
            )
    assert {cap: after[cap] for cap in first_rows} == first_rows  # finished rows were not rewritten


def test_shadow_traffic_is_compared_without_changing_answers(server: ServerThread) -> None:
    with CapregClient(server.target, timeout=120) as admin:
        admin.create_space("static", STATIC, "{name}: {description}")
        list(admin.backfill_space("static"))
        admin.set_shadow("static", 1.0)
        for task in TASKS:
            assert admin.discover(task, top_k=3).vector_space == OLD
        server.run(server.app.discovery.shadow.drain())
        stats = admin.get_space("static").shadow
        assert stats.samples == len(TASKS) and stats.errors == 0
        assert 0.0 <= stats.overlap_at_k <= 1.0 and -1.0 <= stats.rank_correlation <= 1.0
        # the candidate is searched deeply, so each served top 3 has places in its ranking: always defined
        assert stats.rank_correlation_tasks == len(TASKS)
        with pytest.raises(CapregError) as refused:
            admin.set_shadow(OLD, 0.5)  # the serving space is not a candidate
        assert refused.value.code.name == "FAILED_PRECONDITION"


def test_compare_reports_overlap_correlation_and_accuracy(server: ServerThread, tmp_path: Path) -> None:
    with CapregClient(server.target, timeout=120) as admin:
        admin.create_space("static", STATIC, "{name}: {description}")
        list(admin.backfill_space("static"))
        tasks = [admin_pb2.CompareTask(text=task, expected=[name]) for task, name in zip(TASKS, SKILLS, strict=True)]
        same = admin.compare_spaces(admin_pb2.CompareSpacesRequest(old=OLD, new=OLD, tasks=tasks, k=3))
        assert same.overlap_at_k == pytest.approx(1.0) and same.rank_correlation == pytest.approx(1.0)
        assert same.rank_correlation_tasks == len(TASKS)
        assert same.old_accuracy == same.new_accuracy and same.old_accuracy.top1 >= 5 / 6  # MiniLM knows these
        report = admin.compare_spaces(admin_pb2.CompareSpacesRequest(old=OLD, new="static", tasks=tasks, k=3))
        assert report.tasks == report.labelled == len(TASKS)
        assert 0.0 <= report.overlap_at_k <= 1.0 and 0.0 <= report.new_accuracy.top1 <= 1.0
        assert report.new_accuracy.top5 >= report.new_accuracy.top1
        # both spaces rank all six agents (searched 100 deep), so every task's correlation is defined
        assert report.rank_correlation_tasks == len(TASKS) and -1.0 <= report.rank_correlation <= 1.0
    path = tmp_path / "tasks.csv"
    path.write_text("query,tool\n" + "".join(f"{task},{name}\n" for task, name in zip(TASKS, SKILLS, strict=True)))
    result = CliRunner().invoke(
        cli, ["vectors", "compare", OLD, "static", "--tasks", str(path), "--json", "--target", server.target]
    )
    assert result.exit_code == 0, result.output
    assert '"labelled": 6' in result.output and '"old_top1"' in result.output
    assert '"rank_correlation_tasks": 6' in result.output


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (lambda c: c.create_space("bad name!", STATIC, "{name}"), "INVALID_ARGUMENT", "name"),
        (lambda c: c.create_space("x", "no/such-model", "{name}"), "INVALID_ARGUMENT", "model"),
        (lambda c: c.create_space("x", MINILM_NAME, "{nope}"), "INVALID_ARGUMENT", "template"),
        (lambda c: c.create_space(OLD, MINILM_NAME, "{name}"), "ALREADY_EXISTS", ""),
        (lambda c: c.promote_space("nothing"), "NOT_FOUND", ""),
        (lambda c: c.retire_space(OLD), "FAILED_PRECONDITION", ""),
        (lambda c: c.rollback_space(), "FAILED_PRECONDITION", ""),
        (lambda c: c.set_shadow(OLD, 2.0), "INVALID_ARGUMENT", "fraction"),
        (lambda c: list(c.backfill_space(OLD, batch_size=5000)), "INVALID_ARGUMENT", "batch_size"),
        (lambda c: list(c.backfill_space(OLD)), "FAILED_PRECONDITION", ""),
        (
            lambda c: c.compare_spaces(admin_pb2.CompareSpacesRequest(old=OLD, new=OLD)),
            "INVALID_ARGUMENT",
            "tasks",
        ),
    ],
)
def test_bad_rollout_requests_are_refused_and_change_nothing(
    server: ServerThread, call: object, code: str, field: str
) -> None:
    before = server.app.store.watermark()
    with CapregClient(server.target) as client, pytest.raises(CapregError) as refused:
        call(client)  # type: ignore[operator]
    assert refused.value.code.name == code
    assert refused.value.field == field or not field
    assert server.app.store.watermark() == before
    assert [s.name for s in server.app.space_store.list_spaces()] == [OLD]


def test_a_promotion_reaches_another_server_through_the_change_log(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder, models_dir: Path
) -> None:
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    with (
        running_server(tmp_path / "a", pg_database, embedder, models_dir=models_dir) as a,
        running_server(tmp_path / "b", pg_database, embedder, models_dir=models_dir) as b,
        CapregClient(a.target, timeout=120) as on_a,
        CapregClient(b.target) as on_b,
    ):
        for name, description in SKILLS.items():
            on_a.register_agent(make_agent(name, make_capability(name, description=description)))
        on_a.create_space("static", STATIC, "{name}: {description}")
        list(on_a.backfill_space("static"))
        deadline = time.monotonic() + 30
        while not on_b.get_space("static").live_here:  # b builds its own index when NOTIFY reaches it
            assert time.monotonic() < deadline, "b never loaded the new space"
            time.sleep(0.01)
        deadline = time.monotonic() + 30
        while on_b.get_space("static").indexed_here < len(SKILLS):  # and follows the backfill's vectors
            assert time.monotonic() < deadline, "b never indexed the backfilled vectors"
            time.sleep(0.01)
        promoted_at = time.monotonic()
        on_a.promote_space("static")
        deadline = promoted_at + 10
        while on_b.discover(TASKS[0]).vector_space != "static":
            assert time.monotonic() < deadline, "b never switched"
            time.sleep(0.01)
        switched_s = time.monotonic() - promoted_at
        print(f"b served the promoted space {switched_s * 1000:.0f} ms after the promotion")
        assert switched_s < 5
        on_a.retire_space(OLD)
        deadline = time.monotonic() + 10
        while on_b.get_space(OLD).live_here:
            assert time.monotonic() < deadline, "b never freed the retired space"
            time.sleep(0.01)


def test_admin_writes_answer_with_tokens_that_another_server_reads_them_at(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder, models_dir: Path
) -> None:
    """Every rollout write answers with its change-log seq; Discover(min_seq=seq) on another server answers
    after that change. The other server hears nothing else (no NOTIFY, no polling), so only the token
    moves it."""
    engine = support.migrated_engine(pg_database)
    support.empty_tables(engine)
    engine.dispose()
    with (
        running_server(tmp_path / "a", pg_database, embedder, models_dir=models_dir) as a,
        running_server(tmp_path / "b", pg_database, embedder, models_dir=models_dir, change_poll_s=3600) as b,
        CapregClient(a.target, timeout=120) as on_a,
        CapregClient(b.target, timeout=60) as on_b,
    ):
        assert b.app.listener is not None
        b.app.listener.stop()  # from here b follows the log only when a min_seq asks it to
        for name, description in SKILLS.items():
            on_a.register_agent(make_agent(name, make_capability(name, description=description)))
        created = on_a.create_space("static", STATIC, "{name}: {description}")
        steps = list(on_a.backfill_space("static", batch_size=2))
        tokens = [step.consistency_token for step in steps]
        assert 0 < created.consistency_token < tokens[0] and tokens == sorted(tokens)
        assert steps[-1].state == admin_pb2.SPACE_STATE_READY and tokens[-1] > tokens[-2]  # became ready
        assert not on_b.get_space("static").live_here  # b has not followed the log by itself
        pinned = on_b.discover(TASKS[0], space="static", top_k=len(SKILLS), min_seq=tokens[-1])
        assert pinned.vector_space == "static" and len(pinned.matches) == len(SKILLS)  # every backfilled vector
        promoted = on_a.promote_space("static")
        assert promoted.consistency_token > tokens[-1]
        assert on_b.discover(TASKS[0]).vector_space == OLD  # without the token b has not heard of it
        assert on_b.discover(TASKS[0], min_seq=promoted.consistency_token).vector_space == "static"
        rolled_back = on_a.rollback_space()
        assert rolled_back.consistency_token > promoted.consistency_token
        assert on_b.discover(TASKS[0], min_seq=rolled_back.consistency_token).vector_space == OLD
        shadowed = on_a.set_shadow("static", 0.5)
        assert b.app.spaces.get("static").space.shadow_fraction == 0.0
        on_b.discover(TASKS[0], min_seq=shadowed.consistency_token)
        assert b.app.spaces.get("static").space.shadow_fraction == 0.5
        retired = on_a.retire_space("static")
        assert on_b.get_space("static").live_here
        on_b.discover(TASKS[0], min_seq=retired.consistency_token)
        assert not on_b.get_space("static").live_here
        assert on_a.get_space(OLD).consistency_token == 0  # reads carry none


def test_a_model_that_fails_while_backfilling_marks_the_space_failed(server: ServerThread) -> None:
    with CapregClient(server.target, timeout=120) as admin:
        admin.create_space("doomed", STATIC, "{name}: {description}")
        live = server.app.spaces.get("doomed")

        def broken(texts: object) -> object:
            raise RuntimeError("out of memory")

        live.embedder = type("Broken", (), {"embed": staticmethod(broken)})()
        with pytest.raises(CapregError) as failed:
            list(admin.backfill_space("doomed"))
        assert failed.value.code.name == "FAILED_PRECONDITION" and "out of memory" in str(failed.value)
        space = admin.get_space("doomed")
        assert space.state == admin_pb2.SPACE_STATE_FAILED and "out of memory" in space.error
        assert not space.live_here  # a failed space is dropped from every process
        assert admin.retire_space("doomed").state == admin_pb2.SPACE_STATE_RETIRED


def test_the_cli_walks_a_rollout(server: ServerThread) -> None:
    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["vectors", *args, "--target", server.target])
        assert result.exit_code == 0, result.output
        return result.output

    assert "building" in run("create", "static", "--model", STATIC)
    assert "ready" in run("backfill", "static")
    assert '"name": "static"' in run("list", "--json")
    assert "serving" in run("promote", "static")
    assert "minilm-l6-v2: serving" in run("rollback")
    assert "static: retired" in run("retire", "static")
