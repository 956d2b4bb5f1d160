"""Discover by text under concurrent load: requests per second and latency with 32 callers of distinct
texts (every text new to the server, so each one is embedded), and with repeated texts (served from the
embedding cache), beside the null RPC (gRPC health Check) in the same run, against a `capreg serve` child
process. Concurrent texts share model calls through the micro-batcher (registry/embedding/batcher.py); the
mean batch size is read from the server's own metrics (capreg_embed_batch_size).

    .venv/bin/python bench/discover_text.py            # 32 in flight, 10 s per workload
    .venv/bin/python bench/discover_text.py --smoke    # a few seconds, no targets checked
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from capreg.v1 import agent_pb2
from capreg_client import AsyncCapregClient, CapregClient

if __package__ in (None, ""):  # run as `python bench/discover_text.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import LatencyStats, ServerProcess, machine, scratch_dir, write_marked_section
from bench.discover import LoadResult, closed_loop

SUBJECTS = ["invoices", "contracts", "podcasts", "photos", "tickets", "shipments", "patients", "leases",
            "payrolls", "recipes", "flights", "lawsuits", "poems", "spreadsheets", "emails", "meetings"]  # fmt: skip
VERBS = ["summarize", "translate", "classify", "extract the totals from", "check", "route", "draft replies to",
         "find duplicates in", "redact", "index", "score", "review"]  # fmt: skip
METRICS_LINE = re.compile(r"metrics for Prometheus at http://[^:]+:(\d+)/metrics")


def texts(count: int, offset: int) -> list[str]:
    """Distinct, task-like texts: every one differs, so every one is embedded."""
    found = []
    for i in itertools.islice(itertools.count(offset), count):
        verb, subject = VERBS[i % len(VERBS)], SUBJECTS[(i // len(VERBS)) % len(SUBJECTS)]
        found.append(f"please {verb} the {subject} of batch {i} for the team in office {i % 97}")
    return found


async def open_loop(call: Callable[[int], Awaitable[object]], rate: float, seconds: float) -> LoadResult:
    """Requests sent at `rate` per second on a fixed schedule, whether or not earlier ones were answered:
    the latency a caller sees at that offered load (a closed loop would hide queueing)."""
    latencies: list[int] = []
    interval = 1.0 / rate
    started = time.perf_counter()

    async def one(i: int, due: float) -> None:
        await asyncio.sleep(max(due - time.perf_counter(), 0.0))  # the schedule, not synchronisation
        sent = time.perf_counter_ns()
        await call(i)
        latencies.append(time.perf_counter_ns() - sent)

    await asyncio.gather(*(one(i, started + i * interval) for i in range(int(rate * seconds))))
    return LoadResult(len(latencies), time.perf_counter() - started, latencies)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    found: dict[str, float] = {}
    for name in ("capreg_embed_batch_size_sum", "capreg_embed_batch_size_count"):
        values = [float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", body, re.MULTILINE)]
        found[name] = sum(values)
    return found


async def load(target: str, api_key: str | None, concurrency: int, seconds: float, metrics_port: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    offset = itertools.count(10_000_000, 1)
    repeated = texts(64, 0)
    async with AsyncCapregClient(target, timeout=60, api_key=api_key) as client:
        workloads: dict[str, Callable[[int], Awaitable[object]]] = {
            "null": lambda i: client.health(),
            "distinct": lambda i: client.discover(texts(1, next(offset))[0], top_k=5),
            "repeated": lambda i: client.discover(repeated[i % len(repeated)], top_k=5),
        }
        for workload in workloads.values():  # warm-up (and fills the cache for "repeated")
            await closed_loop(workload, concurrency, min(2.0, seconds / 3))

        def closed(workload: Callable[[int], Awaitable[object]]) -> Callable[[], Awaitable[LoadResult]]:
            return lambda: closed_loop(workload, concurrency, seconds)

        runs = {name: closed(workload) for name, workload in workloads.items()}
        runs[f"distinct_at_{TARGET_PER_SECOND:.0f}_per_s"] = lambda: open_loop(
            workloads["distinct"], TARGET_PER_SECOND, seconds
        )
        for name, run in runs.items():
            before = scrape(metrics_port)
            done = await run()
            calls, elapsed, latencies = done.calls, done.seconds, done.latencies_ns
            after = scrape(metrics_port)
            batches = after["capreg_embed_batch_size_count"] - before["capreg_embed_batch_size_count"]
            embedded = after["capreg_embed_batch_size_sum"] - before["capreg_embed_batch_size_sum"]
            results[name] = {
                "per_second": round(calls / elapsed, 1),
                "latency": LatencyStats.of(np.asarray(latencies, dtype=np.int64)).as_dict(),
                "model_calls": int(batches),
                "mean_batch": round(embedded / batches, 2) if batches else 0.0,
            }
            print(f"{name}: {results[name]}", file=sys.stderr)
    return results


def register(target: str, api_key: str | None, count: int) -> None:
    rng = np.random.default_rng(7)
    with CapregClient(target, timeout=60, api_key=api_key) as client:
        for a in range(count):
            vector = rng.standard_normal(384).astype(np.float32)
            vector /= np.linalg.norm(vector)
            cap = agent_pb2.Capability(
                name="work", version="1.0.0", description=f"does work {a}",
                vector=agent_pb2.Vector(values=vector.tolist()),
            )  # fmt: skip
            client.register_agent(
                agent_pb2.Agent(name=f"agent-{a}", kind=agent_pb2.AGENT_KIND_TOOL, capabilities=[cap])
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 s per workload, 200 capabilities")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--capabilities", type=int, default=1000)
    parser.add_argument("--docs", type=Path, help="write this benchmark's section of this Markdown file")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.capabilities = 2.0, 200
    os.environ["CAPREG_METRICS_PORT"] = "0"
    os.environ["CAPREG_METRICS_HOST"] = "127.0.0.1"
    with scratch_dir() as scratch, ServerProcess(scratch / "server", log_level="INFO") as server:
        port_line = METRICS_LINE.search(server.log_path.read_text())
        assert port_line is not None, server.log_tail()
        register(server.target, server.api_key, args.capabilities)
        results = asyncio.run(
            load(server.target, server.api_key, args.concurrency, args.seconds, int(port_line.group(1)))
        )
    summary = {
        "concurrency": args.concurrency,
        "seconds_per_workload": args.seconds,
        "capabilities": args.capabilities,
        "backend": os.environ.get("CAPREG_EMBEDDING_BACKEND", "torch"),
        "results": results,
        "distinct_over_null_per_second": round(results["distinct"]["per_second"] / results["null"]["per_second"], 3),
        "machine": machine(),
    }
    print(json.dumps(summary, indent=1))
    if args.docs is not None and not args.smoke:
        write_marked_section(args.docs, MARK_START, MARK_END, markdown(summary))


MARK_START, MARK_END = "<!-- text:start -->", "<!-- text:end -->"
TARGET_PER_SECOND = 300.0
TARGET_P50_MS = 20.0


def markdown(summary: dict[str, Any]) -> str:
    r = summary["results"]
    distinct = r["distinct"]
    offered = r[f"distinct_at_{TARGET_PER_SECOND:.0f}_per_s"]
    met = distinct["per_second"] >= TARGET_PER_SECOND and offered["latency"]["p50_ms"] < TARGET_P50_MS
    rows = "\n".join(
        f"| {label} | {r[key]['per_second']:.0f} | {r[key]['latency']['p50_ms']:.1f} | "
        f"{r[key]['latency']['p99_ms']:.1f} | {r[key]['model_calls']} | {r[key]['mean_batch']:.1f} |"
        for key, label in (
            ("null", "null RPC (health Check)"),
            ("distinct", "Discover, every text new (embedded)"),
            ("repeated", "Discover, 64 texts repeated (cached)"),
            (f"distinct_at_{TARGET_PER_SECOND:.0f}_per_s", f"Discover, new texts offered at {TARGET_PER_SECOND:.0f}/s"),
        )
    )
    m = summary["machine"]
    return f"""{MARK_START}
## Discover by text under load

Generated by `bench/discover_text.py --docs docs/benchmarks.md`, which rewrites only this section.
{summary["concurrency"]} callers in flight (one asyncio client in this process), {summary["seconds_per_workload"]:g} s
per workload after a warm-up, {summary["capabilities"]:,} capabilities, against a `capreg serve` child process
(SQLite, authentication on, the bundled all-MiniLM-L6-v2 on the {summary["backend"]} backend, set by
CAPREG_EMBEDDING_BACKEND). Model calls and batch sizes come from
the server's own metrics (`capreg_embed_batch_size`).

**Target:** at least {TARGET_PER_SECOND:.0f} requests/s of distinct texts (32 callers, closed loop), and p50 under
{TARGET_P50_MS:.0f} ms when {TARGET_PER_SECOND:.0f} new texts a second are offered (open loop: with 32 callers always
waiting, p50 is 32 / throughput by Little's law, so the latency target is read at the offered rate).
**This run: {distinct["per_second"]:.0f}/s; p50 {offered["latency"]["p50_ms"]:.1f} ms at
{TARGET_PER_SECOND:.0f}/s offered (answered {offered["per_second"]:.0f}/s): {"met" if met else "not met"}.**

| workload | requests/s | p50 ms | p99 ms | model calls | texts per call |
|---|---:|---:|---:|---:|---:|
{rows}

Machine: {m.get("cpu", "?")}, {m.get("cores", "?")} cores, Python {m.get("python", "?")}.
{MARK_END}
"""


if __name__ == "__main__":
    main()
