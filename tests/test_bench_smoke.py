"""The Discover benchmark still runs end to end (its smoke mode); timing targets live in the benchmark,
not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_smoke(script: str, *args: str, timeout: int = 240) -> Any:
    """Run bench/`script` with `args` as CI does; its JSON summary (stdout). A non-zero exit fails the test."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, check=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_discover_benchmark_smoke() -> None:
    summary = run_smoke("discover.py", "--smoke", "--no-docs")
    assert summary["config"]["capabilities"] == 1000
    assert summary["recall_at_10"] == {"discover": 1.0, "discover_filtered": 1.0}
    assert summary["plans"] == {"discover": {"exact": 200}, "discover_filtered": {"exact": 200}}
    for workload in ("null", "discover", "discover_filtered"):
        assert summary["serial"][workload]["n"] == 200
        assert summary["throughput"][workload]["calls"] > 0


def test_filtered_benchmark_smoke() -> None:
    summary = run_smoke("discover_filtered.py", "--smoke", "--no-docs")
    assert [s["selectivity_pct"] for s in summary["steps"]] == [0.01, 0.1, 1, 10, 50, 100]
    for step in summary["steps"]:
        assert step["recall_at_10"] >= 0.99, step
        assert step["server_allowed_rows"] == [step["allowed_rows"]], step
        assert sum(step["plans"].values()) == step["latency"]["n"]


def test_reliability_benchmark_smoke() -> None:
    """Convergence, kill -9 cycles and database restarts, small; it must find nothing wrong either."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reliability.py"), "--smoke"],
        capture_output=True, text=True, check=False, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["config"]["docs"] is None  # smoke mode never rewrites docs/reliability.md
    convergence, kill9, db = summary["convergence"], summary["kill9"], summary["db_restarts"]
    assert convergence["token_violations"] == 0
    assert convergence["discover_with_token"]["n"] == convergence["token_reads"] == 20
    assert kill9["cycles"] == 2 and not kill9["failed_cycles"]
    assert kill9["writes_found"] == kill9["writes_acknowledged"] > 0
    assert kill9["index_source"] == {"database": 1, "snapshot": 1}
    assert [r["mode"] for r in db["restarts"]] == ["fast", "immediate"]
    assert db["writes_found"] == db["writes_acknowledged"] > 0
    assert set(db["refused_codes"]) == {"UNAVAILABLE"} and db["refused_without_retry_hint"] == 0


def test_telemetry_overhead_benchmark_smoke() -> None:
    summary = run_smoke("telemetry_overhead.py", "--smoke")
    assert summary["calls_per_mode"] == 100
    assert summary["spans_exported_while_on"] >= 100  # spans only while on: a server span and its children
    assert summary["off_wrapper_us_per_call"] > 0


def test_text_discover_benchmark_smoke() -> None:
    summary = run_smoke("discover_text.py", "--smoke", timeout=300)
    distinct = summary["results"]["distinct"]
    assert distinct["model_calls"] > 0 and distinct["per_second"] > 0
    assert distinct["mean_batch"] > 1.0  # 32 callers of new texts share model calls
    assert summary["results"]["repeated"]["model_calls"] == 0  # repeated texts come from the cache


def test_bulk_register_benchmark_smoke() -> None:
    summary = run_smoke("bulk_register.py", "--smoke", timeout=300)
    assert summary["created"] == summary["agents"] == 300  # every agent of the manifest, through the real CLI
    assert summary["capabilities_per_second"] > 0 and summary["model_batch_texts_per_second"] > 0


def test_snapshot_load_benchmark_smoke() -> None:
    """Every variant loads the same index; format 2 with the collector paused is what a start does."""
    summary = run_smoke("snapshot_load.py", "--smoke")
    assert summary["config"]["capabilities"] == 2000
    variants = [(r["format"], r["gc_paused"]) for r in summary["results"]]
    assert variants == [(1, False), (1, True), (2, False), (2, True)]
    sizes = {r["format"]: r["entries_bytes_per_capability"] for r in summary["results"]}
    assert 0 < sizes[2] < sizes[1]  # positional rows are smaller than objects with keys
