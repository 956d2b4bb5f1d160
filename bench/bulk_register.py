"""Bulk registration through the real CLI: `capreg agents apply` of a manifest of N agents (one capability
each, every text distinct, so the server embeds every one) against a `capreg serve` child process, beside
the embedding model's own batch throughput measured in this process on texts of the same shape first.

    .venv/bin/python bench/bulk_register.py                 # 5,000 agents
    .venv/bin/python bench/bulk_register.py --agents 100000 # the issue's size (about ten minutes on torch CPU)
    .venv/bin/python bench/bulk_register.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/bulk_register.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, ServerProcess, machine, scratch_dir

TOPICS = ["invoices", "contracts", "podcasts", "photos", "tickets", "shipments", "patients", "leases", "payrolls"]
VERBS = ["summarizes", "translates", "classifies", "extracts totals from", "checks", "routes", "redacts", "indexes"]


def description(i: int) -> str:
    return f"{VERBS[i % len(VERBS)].capitalize()} {TOPICS[(i // len(VERBS)) % len(TOPICS)]} for team {i}."


def manifest(count: int) -> dict[str, object]:
    return {
        "agents": [
            {
                "name": f"bulk-{i}",
                "kind": "tool",
                "endpoint": f"https://bulk-{i}.example.com",
                "capabilities": [{"name": "work", "version": "1.0.0", "description": description(i)}],
            }
            for i in range(count)
        ]
    }


def model_batch_throughput(texts: int) -> float:
    """Texts per second of the bundled model embedding in batches of 64 (its best case), here and now."""
    from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path

    embedder = SentenceTransformerEmbedder(bundled_model_path(), cache_size=0)
    sample = [f"work: {description(10_000_000 + i)}" for i in range(texts)]
    embedder.embed(sample[:64])  # warm up
    started = time.perf_counter()
    for start in range(0, len(sample), 64):
        embedder.embed(sample[start : start + 64])
    return len(sample) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256, help="agents per RegisterAgents call")
    parser.add_argument("--parallel", type=int, default=2, help="batches in flight")
    parser.add_argument("--smoke", action="store_true", help="300 agents")
    args = parser.parse_args()
    if args.smoke:
        args.agents = 300
    model_rate = model_batch_throughput(min(2000, max(args.agents, 256)))
    print(f"model batch throughput: {model_rate:.0f} texts/s", file=sys.stderr)
    with scratch_dir() as scratch:
        path = scratch / "manifest.json"
        path.write_text(json.dumps(manifest(args.agents)))
        with ServerProcess(scratch / "server") as server:
            env = {**os.environ, "CAPREG_API_KEY": server.api_key or ""}
            command = [sys.executable, "-m", "registry.cli.main", "agents", "apply", "-f", str(path), "--parallel",
                       str(args.parallel), "--batch-size", str(args.batch_size), "--target", server.target, "--json",
                       "--timeout", "300"]  # fmt: skip
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=REPO)
            seconds = time.perf_counter() - started
    model_after = model_batch_throughput(min(2000, max(args.agents, 256)))
    print(f"model batch throughput after: {model_after:.0f} texts/s", file=sys.stderr)
    model_rate = (model_rate + model_after) / 2  # bracketing the load: the machine's load may change meanwhile
    registered = json.loads(result.stdout)
    summary = {
        "agents": args.agents,
        "created": sum(r["created"] for r in registered),
        "batch_size": args.batch_size,
        "parallel": args.parallel,
        "seconds": round(seconds, 1),
        "capabilities_per_second": round(args.agents / seconds, 1),
        "model_batch_texts_per_second": round(model_rate, 1),
        "share_of_model_throughput": round(args.agents / seconds / model_rate, 3),
        "machine": machine(),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
