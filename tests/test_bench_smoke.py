"""The Discover benchmark still runs end to end (its smoke mode); timing targets live in the benchmark,
not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_discover_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "discover.py"), "--smoke", "--no-docs"],
        capture_output=True, text=True, check=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["config"]["capabilities"] == 1000
    assert summary["recall_at_10"] == {"discover": 1.0, "discover_filtered": 1.0}
    assert summary["plans"] == {"discover": {"exact": 200}, "discover_filtered": {"exact": 200}}
    for workload in ("null", "discover", "discover_filtered"):
        assert summary["serial"][workload]["n"] == 200
        assert summary["throughput"][workload]["calls"] > 0


def test_filtered_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "discover_filtered.py"), "--smoke", "--no-docs"],
        capture_output=True, text=True, check=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    summary = json.loads(result.stdout)
    assert [s["selectivity_pct"] for s in summary["steps"]] == [0.01, 0.1, 1, 10, 50, 100]
    for step in summary["steps"]:
        assert step["recall_at_10"] >= 0.99, step
        assert step["server_allowed_rows"] == [step["allowed_rows"]], step
        assert sum(step["plans"].values()) == step["latency"]["n"]
