"""The scale benchmark still runs end to end (its smoke mode: 1k capabilities, bulk load, latency beside the
null RPC, memory, cold start); the targets live in the benchmark, not here."""

from __future__ import annotations

from tests.test_bench_smoke import run_smoke


def test_scale_benchmark_smoke() -> None:
    summary = run_smoke("scale.py", "--smoke")
    assert summary["config"]["smoke"] and summary["skipped"] == []
    [row] = summary["results"]
    assert row["capabilities"] == 1000 and row["agents"] == 100
    assert row["recall_at_10"] > 0.9
    assert sum(row["plans"].values()) == row["serial"]["discover"]["n"] == 200
    for key in ("p50", "p99", "throughput", "load_p50", "load_p99"):
        assert row["ratio_vs_null"][key] > 0, key
    for workload in ("null", "discover"):
        assert row["throughput"][workload]["calls"] > 0
    assert row["load"]["capabilities_per_s"] > 0
    memory = row["memory"]
    assert memory["rss_loaded_bytes"] > memory["rss_empty_bytes"] > 0
    assert memory["ratio_added_loaded"] > 0 and memory["snapshot_file_bytes"]["vectors.npy"] > 1000 * 384 * 4
    cold = row["cold_start"]
    assert cold["source"] == "snapshot" and cold["capabilities"] == 1000  # SIGTERM wrote one; the restart loads it
    assert cold["seconds"] > 0 and cold["server_startup_seconds"] >= 0
    assert row["exact_in_process"]["all_rows"]["p50_ms"] > 0
