"""The capreg command line against a real server, as a user would run it."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli.main import cli
from registry.embedding.sentence import SentenceTransformerEmbedder
from tests.support import ServerThread, running_server

AGENTS_YAML = """
agents:
  - name: haiku-poet
    kind: agent
    endpoint: https://poet.example.com
    labels: {team: verse}
    capabilities:
      - name: write-haiku
        version: 1.0.0
        description: Writes haiku poems about any subject in the 5-7-5 form.
        examples: [Write a haiku about autumn rain]
        tags: [poetry, creative-writing]
        cost: {per_call_usd: 0.002}
        latency_p50_ms: 300
        regions: [eu-west-1]
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_discover_prints_a_table_with_the_translation_agent_first(demo_server: ServerThread) -> None:
    # A real process, exactly as a user types it.
    result = subprocess.run(
        [sys.executable, "-m", "registry.cli.main", "discover", "translate this German supply contract into English",
         "--target", demo_server.target],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert "polyglot-legal-translator" in rows[0] and "translate" in rows[0]
    header = result.stdout
    for column in ("similarity", "score", "cost", "regions"):
        assert column in header


def test_discover_json_and_explain(demo_server: ServerThread) -> None:
    code, out = run("discover", "transcribe this podcast episode", "--json", "-k", "3", "--target", demo_server.target)
    assert code == 0
    answer = json.loads(out)
    assert len(answer["matches"]) == 3
    assert "transcri" in answer["matches"][0]["capability"]["name"]
    assert answer["explanation"]["plan"] == "exact"
    code, out = run(
        "discover", "caption this photo", "--explain", "--region", "eu-west-1", "--target", demo_server.target
    )
    assert code == 0 and "excluded by filter.regions" in out and "plan" in out


def test_an_outcome_reported_from_the_command_line_changes_the_explanation(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """A demo server of its own: the shared one stays read-only."""
    data = tmp_path / "data"
    with running_server(data, f"sqlite:///{data / 'capreg.db'}", embedder, demo=True) as server:
        outcome_round_trip(server.target)


def outcome_round_trip(target: str) -> None:
    task = ["discover", "transcribe this podcast episode", "--target", target]
    code, out = run(*task, "--json", "-k", "2")
    assert code == 0
    answer = json.loads(out)
    first, second = answer["matches"]
    code, out = run("outcomes", "report", first["capability"]["id"], "--failure", "--discover-id",
                    answer["discover_id"], "--latency-ms", "900", "--target", target)  # fmt: skip
    assert code == 0 and "recorded outcome" in out
    code, out = run(*task, "--json", "-k", "100")  # all of them: the failed one is now near the bottom
    again = {m["capability"]["id"]: m for m in json.loads(out)["matches"]}
    assert next(iter(again)) == second["capability"]["id"]
    learned = {t["name"]: t.get("value", 0.0) for t in again[first["capability"]["id"]]["score_terms"]}
    assert learned["learned_quality"] < 0
    code, out = run(*task, "--explain", "--latency-preference", "0.3", "--cost-preference", "0.2")
    assert code == 0 and "learned_quality" in out and "latency" in out and "cost" in out
    code, out = run("outcomes", "report", first["capability"]["id"], "--target", target)
    assert code == 2 and "exactly one of --success" in out


def test_apply_list_get_status_delete(demo_server: ServerThread, tmp_path: Path) -> None:
    manifest = tmp_path / "agents.yaml"
    manifest.write_text(AGENTS_YAML)
    target = ("--target", demo_server.target)
    code, out = run("agents", "apply", "-f", str(manifest), *target)
    assert code == 0 and "default/haiku-poet: created (generation 1)" in out
    code, out = run("agents", "apply", "-f", str(manifest), "--json", *target)
    applied = json.loads(out)
    assert applied[0].pop("consistency_token") >= 1  # unchanged: the newest change it read
    assert applied == [
        {"name": "haiku-poet", "tenant": "default", "created": False, "changed": False, "generation": 1}
    ]  # fmt: skip
    code, out = run("discover", "write a short poem about the sea", "--json", "-k", "1", *target)
    assert json.loads(out)["matches"][0]["agent_name"] == "haiku-poet"

    code, out = run("agents", "list", "--label", "team=verse", "--json", *target)
    assert [a["name"] for a in json.loads(out)] == ["haiku-poet"]
    code, out = run("agents", "get", "haiku-poet", *target)
    assert code == 0 and "write-haiku 1.0.0" in out
    code, out = run("agents", "status", "haiku-poet", "draining", *target)
    assert code == 0 and "draining" in out
    code, out = run("discover", "write a short poem about the sea", "--json", *target)
    assert "haiku-poet" not in [m["agent_name"] for m in json.loads(out)["matches"]]
    code, out = run("agents", "delete", "haiku-poet", *target)
    assert code == 0
    code, out = run("agents", "get", "haiku-poet", *target)
    assert code == 1 and "NOT_FOUND" in out and "capreg agents list" in out


def test_errors_say_what_to_do(demo_server: ServerThread, tmp_path: Path) -> None:
    code, out = run("discover", "anything", "--target", "127.0.0.1:1", "--timeout", "2")
    assert code == 1 and "UNAVAILABLE" in out and "capreg serve" in out
    code, out = run("discover", "anything", "--max-cost", "nan", "--target", demo_server.target)
    assert code == 1 and "INVALID_ARGUMENT" in out and "filters.max_cost_usd" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  - name: x\n    kind: robot\n")
    code, out = run("agents", "apply", "-f", str(bad), "--target", demo_server.target)
    assert code == 1 and "agents[0]" in out


def test_apply_sends_batches_and_names_the_manifest_entry_a_batch_failed_on(
    demo_server: ServerThread, tmp_path: Path
) -> None:
    entries = [
        {
            "name": f"batched-{i}" if i != 3 else "Batched 3",  # not a valid name: the server refuses it
            "kind": "tool",
            "endpoint": f"https://batched-{i}.example.com",
            "capabilities": [{"name": "lookup", "version": "1.0.0", "description": f"looks up record type {i}"}],
        }
        for i in range(5)
    ]
    manifest = tmp_path / "batched.json"
    manifest.write_text(json.dumps({"agents": entries}))
    target = ("--target", demo_server.target)
    code, out = run("agents", "apply", "-f", str(manifest), "--batch-size", "2", "--parallel", "1", *target)
    assert code == 1
    assert "manifest agent #4 (Batched 3)" in out and "name" in out and "agents[" not in out
    assert "2 agents in other batches were" in out
    code, out = run("agents", "list", "--prefix", "batched-", "--json", *target)
    assert sorted(a["name"] for a in json.loads(out)) == ["batched-0", "batched-1"]
    entries[3]["name"] = "batched-3"
    manifest.write_text(json.dumps({"agents": entries}))
    code, out = run("agents", "apply", "-f", str(manifest), "--batch-size", "2", *target)
    assert code == 0, out
    assert "5 agents (5 capabilities): 3 created, 0 updated, 2 unchanged" in out


def test_migrate_up_and_down(tmp_path: Path) -> None:
    code, out = run("migrate", "--data-dir", str(tmp_path))
    assert code == 0 and re.search(r"upgrade: empty -> (\d{4}) \(head is \1\)", out)
    code, out = run("migrate", "--to", "base", "--data-dir", str(tmp_path))
    assert code == 0 and re.search(r"downgrade: \d{4} -> empty", out)
    code, out = run("migrate", "--to", "bogus", "--data-dir", str(tmp_path))
    assert code == 1 and "unknown revision" in out


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["migrate"], ["agents"], ["agents", "apply"], ["agents", "list"], ["agents", "get"],
     ["agents", "status"], ["agents", "delete"], ["agents", "import"], ["agents", "export"], ["discover"],
     ["outcomes"], ["outcomes", "report"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    code, out = run(*command, "--help")
    assert code == 0 and "Usage: " in out


def test_import_export_and_watch_from_the_command_line(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "interop"
    data = tmp_path / "data"
    with running_server(data, f"sqlite:///{data / 'capreg.db'}", embedder) as server:
        target = ["--target", server.target]
        code, out = run("agents", "import", str(fixtures / "a2a_v10_card.json"), "--tenant", "cli", *target)
        assert code == 0 and "cli/trip-planner (a2a-1.0): created" in out and "added:" in out
        code, out = run("agents", "import", str(fixtures / "a2a_v10_card.json"), "--tenant", "cli", *target)
        assert code == 0 and "unchanged" in out
        code, out = run("agents", "import", str(fixtures / "mcp_server_remote.json"), "--tools",
                        str(fixtures / "mcp_tools_list.json"), "--tenant", "cli", "--json", *target)  # fmt: skip
        assert code == 0 and json.loads(out)["format"] == "mcp-server"
        exported = tmp_path / "card.json"
        code, out = run("agents", "export", "trip-planner", "--tenant", "cli", "-o", str(exported), *target)
        assert code == 0
        assert json.loads(exported.read_text()) == json.loads((fixtures / "a2a_v10_card.json").read_text())
        code, out = run("agents", "export", "io-github-acme-weather", "--format", "mcp", "--tenant", "cli", *target)
        assert code == 0 and json.loads(out)["name"] == "io.github.acme/weather"
        broken = tmp_path / "broken.json"
        card = json.loads((fixtures / "a2a_v10_card.json").read_text())
        broken.write_text(json.dumps({**card, "skills": 3}))
        code, out = run("agents", "import", str(broken), *target)
        assert code == 1 and "card.skills" in out

        watcher = subprocess.Popen(
            [sys.executable, "-m", "registry.cli.main", "discover", "plan a rail trip from Munich to Vienna",
             "--tenant", "cli", "--watch", "--updates", "2", "--json", "--coalesce-ms", "10", *target],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in watcher.stdout or ():
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            first = json.loads(lines.get(timeout=60))
            assert first["reasons"] == ["initial"]
            assert first["answer"]["matches"][0]["agent_name"] == "trip-planner"
            code, out = run("agents", "status", "trip-planner", "draining", "--tenant", "cli", *target)
            second = json.loads(lines.get(timeout=30))
            assert second["reasons"] == ["agent"]
            assert "trip-planner" not in {m["agent_name"] for m in second["answer"].get("matches", [])}
            assert watcher.wait(timeout=30) == 0  # --updates 2: it stops by itself
        finally:
            watcher.kill()
            watcher.wait(timeout=30)
            reader.join(timeout=30)
            if watcher.stdout is not None:
                watcher.stdout.close()


def test_a_failed_batch_names_each_manifest_entry_and_says_what_may_have_been_written() -> None:
    from types import SimpleNamespace

    import grpc
    from capreg_client import CapregError

    from registry.cli.apply import BatchFailed

    batch = [SimpleNamespace(name=f"n{i}") for i in range(4)]
    duplicate = CapregError(
        grpc.StatusCode.INVALID_ARGUMENT, "agents[3].agent.name: 'n1' is also agents[1]; send each agent once"
    )
    message = str(BatchFailed(100, batch, duplicate, 100))
    assert message.startswith("INVALID_ARGUMENT: manifest agent #104 (n3) name: 'n1' is also manifest agent #102 (n1);")
    assert (
        "Nothing of the batch holding manifest agents #101-#104 was written; 100 agents in other batches were"
        in message
    )
    lost = CapregError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    message = str(BatchFailed(0, batch, lost, 0))
    assert "may or may not have been written" in message and "Apply the manifest again" in message
