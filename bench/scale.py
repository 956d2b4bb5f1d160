"""Discover by vector as the catalog grows: for each N (1k, 10k, 100k, 1M when it fits), a fresh `capreg serve`
child process, N capabilities loaded through the bulk RPC (RegisterAgents, each capability with its own
vector, so nothing is embedded), then in the same run: the null RPC (gRPC health Check) beside Discover by
vector with a 50% region filter (serial and closed loop), recall@10 against exact search, load rate, the
server's resident memory against the raw vectors plus the HNSW graph, and a cold start from the shutdown
snapshot. Exact search in this process over the same N vectors is timed too: it grows linearly.

    .venv/bin/python bench/scale.py                           # 1k, 10k, 100k (1M if the 100k load says it fits)
    .venv/bin/python bench/scale.py --sizes 1000,10000,100000
    .venv/bin/python bench/scale.py --smoke                   # 1k only, short, < 60 s; writes no docs

Progress goes to stderr, a JSON summary to stdout; the full run rewrites its section of docs/benchmarks.md
(between `<!-- scale:start -->` and `<!-- scale:end -->`) and docs/img/scale_latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from capreg.v1 import discovery_pb2
from capreg_client import AsyncCapregClient, CapregClient

if __package__ in (None, ""):  # run as `python bench/scale.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common
from bench import discover as base
from registry.index import exact

DEFAULTS = base.DEFAULTS  # the server runs with these
DIM, TOP_K, CAPS_PER_AGENT = base.DIM, base.TOP_K, base.CAPS_PER_AGENT
WORKLOADS = ("null", "discover")
LABELS = {"null": "null RPC (health Check)", "discover": "Discover by vector, top_k=10, region filter (50%)"}
DEFAULT_SIZES = (1000, 10_000, 100_000, 1_000_000)
# The targets (docs/benchmarks.md quotes them).
TARGET_P50 = 1.5  # Discover p50 / null p50
TARGET_P99 = 4.0  # Discover p99 / null p99
TARGET_THROUGHPUT = 0.6  # Discover calls/s / null calls/s
TARGET_MEMORY = 1.5  # resident bytes per capability / (vector + HNSW graph bytes per capability)
TARGET_COLD_START_S = 30.0  # at 1M, from a snapshot
START_MARK, END_MARK = "<!-- scale:start -->", "<!-- scale:end -->"
AFTER_HEADING = "## Discover by vector at "  # bench/discover.py's section: the scale section goes after it
DOCS = common.REPO / "docs" / "benchmarks.md"
PLOT = common.REPO / "docs" / "img" / "scale_latency.png"

err = base.err
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Config:
    sizes: tuple[int, ...]
    queries: int
    warmup: int
    concurrency: int
    duration_s: float
    rounds: int
    batch_agents: int
    parallel: int
    max_load_minutes: float
    max_run_minutes: float
    seed: int
    smoke: bool


# -- memory ------------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def graph_bytes_per_capability(m: int) -> float:
    """hnswlib's link lists per element: level 0 holds 2M neighbour ids (4 bytes each) and a count; an element
    reaches level l >= 1 with probability M^-l, each upper level M ids and a count."""
    level0 = 2 * m * 4 + 4
    upper = (m * 4 + 4) / (m - 1)  # sum over l >= 1 of M^-l = 1 / (M - 1)
    return level0 + upper


VECTOR_BYTES = DIM * 4


def snapshot_files(data_dir: Path) -> dict[str, int]:
    """Sizes of the CURRENT snapshot's files (the shutdown snapshot), by name."""
    sizes: dict[str, int] = {}
    for pointer in (data_dir / "snapshots").glob("*/CURRENT"):
        directory = pointer.parent / pointer.read_text().strip()
        for f in directory.iterdir():
            sizes[f.name] = sizes.get(f.name, 0) + f.stat().st_size
    return sizes


def make_vectors(n: int, queries: int, seed: int) -> tuple[Vectors, Vectors]:
    """bench/discover.py's catalog (the same vectors at the same seed) up to 200k; above, the same
    distribution drawn in float32 chunks, so 1M does not need ~9 GiB of float64 temporaries here."""
    if n <= 200_000:
        return base.make_vectors(n, queries, seed)
    rng = np.random.default_rng(seed)
    centres = base.unit(rng.standard_normal((max(1, n // base.CLUSTER_SIZE), DIM)))

    def sample(count: int) -> Vectors:
        out = np.empty((count, DIM), dtype=np.float32)
        for start in range(0, count, 65_536):
            size = min(65_536, count - start)
            members = rng.integers(len(centres), size=size)
            noise = base.SPREAD * rng.standard_normal((size, DIM)) / math.sqrt(DIM)
            out[start : start + size] = base.unit(centres[members] + noise)
        return out

    return sample(n), sample(queries)


# -- loading -----------------------------------------------------------------------------------------


def load(client: CapregClient, vectors: Vectors, config: Config) -> tuple[float, list[float], int]:
    """Register every capability through RegisterAgents, `batch_agents` agents a call, `parallel` calls in
    flight; returns seconds, the rate (capabilities/s) over each tenth of the load, and how many were loaded:
    fewer than asked when --max-load-minutes ran out (whole agents, from the first)."""
    n = len(vectors)
    agents = math.ceil(n / CAPS_PER_AGENT)
    batches = [range(a, min(a + config.batch_agents, agents)) for a in range(0, agents, config.batch_agents)]

    def send(batch: range) -> int:
        response = client.register_agents([base.make_agent(a, vectors) for a in batch], timeout=300)
        if not all(r.created for r in response.results):
            raise RuntimeError("an agent already existed: the database was not empty")
        return min(batch.stop * CAPS_PER_AGENT, n) - batch.start * CAPS_PER_AGENT

    started = time.perf_counter()
    deadline = started + config.max_load_minutes * 60
    loaded, marks = 0, [(0, started)]  # (capabilities loaded, when) at each tenth

    def account(done: int) -> None:
        nonlocal loaded
        loaded += done
        bar.advance(task, done)
        if loaded >= n * len(marks) / 10:
            marks.append((loaded, time.perf_counter()))

    def rates() -> list[float]:
        if n < 100 * config.batch_agents * CAPS_PER_AGENT:  # under 10 calls a tenth: answers arrive in bunches
            return []
        return [round((b[0] - a[0]) / (b[1] - a[1]), 1) for a, b in itertools.pairwise(marks) if b[1] > a[1]]

    with base.progress() as bar, ThreadPoolExecutor(config.parallel) as pool:
        task = bar.add_task(f"loading {n:,} capabilities (RegisterAgents)", total=n)
        pending: list[Future[int]] = []
        for batch in batches:
            if time.perf_counter() > deadline:
                err.print(f"[yellow]--max-load-minutes {config.max_load_minutes:g} ran out: stopping the load[/yellow]")
                break
            pending.append(pool.submit(send, batch))
            if len(pending) >= config.parallel * 2:  # bounded: proto building stays just ahead of the server
                account(pending.pop(0).result())
        for future in pending:
            account(future.result())
    return time.perf_counter() - started, rates(), loaded


# -- measurements ------------------------------------------------------------------------------------


def measure_serial(
    client: CapregClient, requests: list[discovery_pb2.DiscoverRequest], count: int, warmup: int
) -> tuple[dict[str, list[int]], list[base.Served]]:
    """One call in flight, null RPC and Discover interleaved call by call in rotating order."""
    for i in range(warmup):
        client.health()
        client.discover_request(requests[i % len(requests)])
    latencies: dict[str, list[int]] = {w: [] for w in WORKLOADS}
    answers: list[base.Served] = []
    with base.progress() as bar:
        task = bar.add_task("serial latency", total=count)
        for i in range(count):
            for k in range(len(WORKLOADS)):
                workload = WORKLOADS[(i + k) % len(WORKLOADS)]
                started = time.perf_counter_ns()
                if workload == "null":
                    client.health()
                    latencies[workload].append(time.perf_counter_ns() - started)
                else:
                    response = client.discover_request(requests[i])
                    latencies[workload].append(time.perf_counter_ns() - started)
                    answers.append(base.served(response))
            bar.advance(task)
    return latencies, answers


async def measure_load(
    target: str, api_key: str | None, requests: list[discovery_pb2.DiscoverRequest], config: Config
) -> dict[str, base.LoadResult]:
    """Closed loop, `concurrency` callers over one grpc.aio channel, rounds alternating the workloads."""
    totals = {w: base.LoadResult(0, 0.0, []) for w in WORKLOADS}
    async with AsyncCapregClient(target, timeout=30, api_key=api_key) as client:

        def call_for(workload: str) -> Callable[[int], Awaitable[object]]:
            if workload == "null":
                return lambda i: client.health()
            return lambda i: client.discover_request(requests[i % len(requests)])

        for workload in WORKLOADS:
            await base.closed_loop(call_for(workload), config.concurrency, min(1.0, config.duration_s / 4))
        for r in range(config.rounds):
            for k in range(len(WORKLOADS)):
                workload = WORKLOADS[(r + k) % len(WORKLOADS)]
                result = await base.closed_loop(call_for(workload), config.concurrency, config.duration_s)
                totals[workload].calls += result.calls
                totals[workload].seconds += result.seconds
                totals[workload].latencies_ns += result.latencies_ns
    return totals


def exact_cost(vectors: Vectors, queries: Vectors, allowed: npt.NDArray[np.int64], count: int) -> common.LatencyStats:
    """In-process exact top-10 over the allowed rows (registry.index.exact, as the server's exact plan
    does): what Discover would cost per query without an index, before any RPC."""
    samples: list[int] = []
    for q in queries[:count]:
        started = time.perf_counter_ns()
        exact.top_k(vectors, allowed, q, TOP_K)
        samples.append(time.perf_counter_ns() - started)
    return common.LatencyStats.of(samples)


def start_server(data_dir: Path) -> tuple[common.ServerProcess, float]:
    """A `capreg serve` and the seconds from spawning it until it said it serves (printed right after gRPC
    health turned SERVING: the index is loaded and caught up with the change log)."""
    started = time.perf_counter()
    server = common.ServerProcess(data_dir, start_timeout_s=1800)
    return server, time.perf_counter() - started


def measure_size(n: int, config: Config, scratch: Path) -> dict[str, Any]:
    err.rule(f"[bold]{n:,} capabilities[/bold]")
    vectors, queries = make_vectors(n, config.queries, config.seed)
    requests = [base.discover_request(q, filtered=True) for q in queries]
    even = np.flatnonzero(np.arange(n) % len(base.REGIONS) == 0).astype(np.int64)
    data_dir = scratch / f"n{n}"
    result: dict[str, Any] = {"capabilities": n, "agents": math.ceil(n / CAPS_PER_AGENT)}
    load_avg: list[float] = []

    err.print("starting `capreg serve` on an empty SQLite database ...")
    server, empty_start_s = start_server(data_dir)
    try:
        rss_empty = rss_bytes(server.pid)
        with CapregClient(server.target, timeout=60, api_key=server.api_key) as client:
            load_s, load_rates, loaded = load(client, vectors, config)
            if loaded < 100:
                raise RuntimeError(
                    f"only {loaded} capabilities loaded in --max-load-minutes {config.max_load_minutes:g}"
                )
            if loaded < n:  # measure at the size the load reached
                result["asked"], result["stopped_early"] = n, f"--max-load-minutes {config.max_load_minutes:g}"
                n = result["capabilities"] = loaded
                result["agents"] = math.ceil(n / CAPS_PER_AGENT)
                vectors, even = vectors[:n], even[even < n]
            status = client.index_status()
            if status.capabilities != n:
                raise RuntimeError(f"the index holds {status.capabilities} capabilities, not {n}")
            rss_loaded = rss_bytes(server.pid)
            load_avg.append(common.machine()["loadavg_1m_at_start"])
            latencies, answers = measure_serial(client, requests, config.queries, config.warmup)
        load_result = asyncio.run(measure_load(server.target, server.api_key, requests, config))
        load_avg.append(common.machine()["loadavg_1m_at_start"])
        rss_measured = rss_bytes(server.pid)
        err.print("stopping (SIGTERM: the server writes its shutdown snapshot) ...")
        stop_started = time.perf_counter()
        server.stop(timeout_s=600)
        stop_s = time.perf_counter() - stop_started
    finally:
        server.stop(timeout_s=600)
    snapshot = snapshot_files(data_dir)

    err.print("exact search in this process ...")
    count = min(config.queries, 300, max(30, 30_000_000 // n))
    exact_all = exact_cost(vectors, queries, np.arange(n, dtype=np.int64), count)
    exact_filtered = exact_cost(vectors, queries, even, count)

    err.print("cold start on the same data directory ...")
    server, cold_start_s = start_server(data_dir)
    try:
        with CapregClient(server.target, timeout=60, api_key=server.api_key) as client:
            if not client.health():
                raise RuntimeError("the restarted server does not say SERVING")
            status = client.index_status()
            client.discover_request(requests[0])
        rss_restarted = rss_bytes(server.pid)
    finally:
        server.stop(timeout_s=600)

    truth = base.exact_top_k(vectors, queries, even, TOP_K)
    stats = {w: common.LatencyStats.of(latencies[w]) for w in WORKLOADS}
    under_load = {w: common.LatencyStats.of(load_result[w].latencies_ns) for w in WORKLOADS}
    budget = VECTOR_BYTES + graph_bytes_per_capability(DEFAULTS.hnsw_m)
    result |= {
        "load": {
            "seconds": round(load_s, 2),
            "capabilities_per_s": round(n / load_s, 1),
            "batch_agents": config.batch_agents,
            "parallel": config.parallel,
            "rate_by_tenth": load_rates,
        },
        "serial": {w: stats[w].as_dict() for w in WORKLOADS},
        "throughput": {
            w: {"calls": load_result[w].calls, "per_s": round(load_result[w].per_second, 1)}
            | {"latency": under_load[w].as_dict()}
            for w in WORKLOADS
        },
        "ratio_vs_null": {
            "p50": round(stats["discover"].p50_ms / stats["null"].p50_ms, 2),
            "p99": round(stats["discover"].p99_ms / stats["null"].p99_ms, 2),
            "throughput": round(load_result["discover"].per_second / load_result["null"].per_second, 3),
            "load_p50": round(under_load["discover"].p50_ms / under_load["null"].p50_ms, 2),
            "load_p99": round(under_load["discover"].p99_ms / under_load["null"].p99_ms, 2),
        },
        "recall_at_10": round(base.recall_at_k(answers, truth), 4),
        "plans": dict(Counter(a.plan for a in answers)),
        "server_search_p50_ms": round(float(np.median([a.server_ms.get("search", 0.0) for a in answers])), 4),
        "server_total_p50_ms": round(float(np.median([a.server_ms.get("total", 0.0) for a in answers])), 4),
        "exact_in_process": {"all_rows": exact_all.as_dict(), "filtered_50pct": exact_filtered.as_dict()},
        "memory": {
            "rss_empty_bytes": rss_empty,
            "rss_loaded_bytes": rss_loaded,
            "rss_after_measuring_bytes": rss_measured,
            "rss_restarted_bytes": rss_restarted,
            "rss_per_capability": round(rss_loaded / n, 1),
            "added_per_capability_loaded": round((rss_loaded - rss_empty) / n, 1),
            "added_per_capability_restarted": round((rss_restarted - rss_empty) / n, 1),
            "vector_bytes_per_capability": VECTOR_BYTES,
            "graph_bytes_per_capability": round(graph_bytes_per_capability(DEFAULTS.hnsw_m), 1),
            "hnsw_m": DEFAULTS.hnsw_m,
            "ratio_added_loaded": round((rss_loaded - rss_empty) / n / budget, 2),
            "ratio_added_restarted": round((rss_restarted - rss_empty) / n / budget, 2),
            "snapshot_file_bytes": snapshot,
        },
        "cold_start": {
            "empty_start_s": round(empty_start_s, 2),
            "seconds": round(cold_start_s, 2),
            "source": status.startup_source,
            "reason": status.startup_reason,
            "server_startup_seconds": round(status.startup_seconds, 3),
            "capabilities": status.capabilities,
            "stop_s": round(stop_s, 2),
        },
        "loadavg_1m": load_avg,
    }
    err.print(
        f"{n:,}: load {n / load_s:,.0f} caps/s; Discover p50 {stats['discover'].p50_ms:.3f} ms = "
        f"{result['ratio_vs_null']['p50']:.2f}x null; throughput {result['ratio_vs_null']['throughput']:.2f} of null; "
        f"recall {result['recall_at_10']:.4f}; +RSS/cap {result['memory']['added_per_capability_loaded']:,.0f} B; "
        f"cold start {cold_start_s:.1f} s ({status.startup_source})"
    )
    return result


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def why_not(measured: list[dict[str, Any]], n: int, config: Config, elapsed_s: float) -> str | None:
    """Why `n` should not be run, extrapolating from the largest size measured (linearly: a floor, as HNSW
    inserts get slower while the graph deepens); None when it fits."""
    if not measured:
        return None
    last = measured[-1]
    rate = float(last["load"]["capabilities_per_s"])
    load_s = n / rate
    at = f"(measured at {last['capabilities']:,})"
    if load_s > config.max_load_minutes * 60:
        return (
            f"loading at {rate:,.0f} capabilities/s {at} would take {load_s / 60:.0f} min, "
            f"over --max-load-minutes {config.max_load_minutes:g}"
        )
    if elapsed_s + load_s * 1.3 + 120 > config.max_run_minutes * 60:
        return (
            f"loading at {rate:,.0f} capabilities/s {at} would take {load_s / 60:.0f} min, which with the "
            f"{elapsed_s / 60:.0f} min spent would pass --max-run-minutes {config.max_run_minutes:g}"
        )
    server = last["memory"]["rss_empty_bytes"] + last["memory"]["added_per_capability_loaded"] * n
    client = n * DIM * (8 * 3 if n <= 200_000 else 4 * 2)  # make_vectors' temporaries, exact search's copy
    if server + client > 0.9 * available_memory():
        return (
            f"the server would hold ~{server / 2**30:.1f} GiB at {last['memory']['added_per_capability_loaded']:,.0f} "
            f"B per capability {at}, and this process ~{client / 2**30:.1f} GiB while drawing the vectors: more "
            f"than the {available_memory() / 2**30:.1f} GiB available"
        )
    return None


def revision() -> str:
    """The commit measured, and whether the working tree differed from it (others edit it meanwhile)."""
    import subprocess

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=common.REPO)
        return result.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "registry")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in registry/" if dirty else "")


def run(config: Config) -> dict[str, Any]:
    machine = common.machine()
    machine["revision"] = revision()
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with common.scratch_dir("capreg-scale-") as scratch:
        for n in config.sizes:
            reason = why_not(results, n, config, time.perf_counter() - started)
            if reason is not None:
                err.print(f"[yellow]skipping {n:,}: {reason}[/yellow]")
                skipped.append({"capabilities": n, "reason": reason})
                continue
            results.append(measure_size(n, config, scratch))
    return {
        "benchmark": "discover_scale",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/scale.py", *sys.argv[1:]]),
        "config": {
            "sizes": list(config.sizes),
            "queries": config.queries,
            "warmup": config.warmup,
            "concurrency": config.concurrency,
            "duration_s": config.duration_s,
            "rounds": config.rounds,
            "batch_agents": config.batch_agents,
            "parallel": config.parallel,
            "caps_per_agent": CAPS_PER_AGENT,
            "seed": config.seed,
            "database": "sqlite (embedded, temp dir)",
            "hnsw": {
                "m": DEFAULTS.hnsw_m,
                "ef_construction": DEFAULTS.hnsw_ef_construction,
                "ef_search": DEFAULTS.hnsw_ef_search,
            },
            "smoke": config.smoke,
        },
        "machine": machine,
        "results": results,
        "skipped": skipped,
    }


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several runs (e.g. 1M run on its own): the first run's header, every run's sizes."""
    merged = dict(summaries[0])
    results = {r["capabilities"]: r for s in summaries for r in s["results"]}
    merged["results"] = [results[n] for n in sorted(results)]
    measured = set(results) | {r["asked"] for r in results.values() if "asked" in r}
    merged["skipped"] = [k for s in summaries for k in s["skipped"] if k["capabilities"] not in measured]
    merged["runs"] = [{"command": s["command"], "when": s["when"], "machine": s["machine"]} for s in summaries]
    merged["command"] = "\n".join(s["command"] for s in summaries)
    return merged


# -- the report --------------------------------------------------------------------------------------


def plot(summary: dict[str, Any], path: Path) -> None:
    """Latency against N (log-log): Discover and the null RPC, serial p50/p99, beside exact search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = summary["results"]
    ns = [r["capabilities"] for r in rows]
    fig, (serial, load) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for key, style, mark in (("p50_ms", "-", "o"), ("p99_ms", "--", "x")):
        tag = key.split("_")[0]
        serial.plot(ns, [r["serial"]["discover"][key] for r in rows], style, marker=mark, color="tab:blue",
                    label=f"Discover {tag} (50% filter)")  # fmt: skip
        serial.plot(ns, [r["serial"]["null"][key] for r in rows], style, marker=mark, color="tab:gray",
                    label=f"null RPC {tag}")  # fmt: skip
    exact_p50 = [r["exact_in_process"]["filtered_50pct"]["p50_ms"] for r in rows]
    serial.plot(ns, exact_p50, ":", marker="s", color="tab:red", label="exact search p50, in-process (50% rows)")
    serial.plot(ns, [e + r["serial"]["null"]["p50_ms"] for e, r in zip(exact_p50, rows, strict=True)], "-.",
                color="tab:red", alpha=0.5, label="exact p50 + null RPC p50 (estimate)")  # fmt: skip
    serial.plot(ns, [r["server_search_p50_ms"] for r in rows], ":", marker="^", color="tab:green",
                label="server's search stage p50 (HNSW/exact)")  # fmt: skip
    serial.set_title("One call in flight")
    serial.set_ylabel("latency, ms (log scale)")
    load.plot(ns, [r["throughput"]["discover"]["per_s"] for r in rows], marker="o", color="tab:blue",
              label="Discover (50% filter)")  # fmt: skip
    load.plot(ns, [r["throughput"]["null"]["per_s"] for r in rows], marker="o", color="tab:gray", label="null RPC")
    load.set_title(f"Throughput, {summary['config']['concurrency']} in flight")
    load.set_ylabel("calls per second")
    load.set_ylim(bottom=0)
    for ax in (serial, load):
        ax.set_xscale("log")
        ax.set_xlabel("capabilities (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    serial.set_yscale("log")
    serial.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    m = summary["machine"]
    fig.suptitle(f"capreg Discover by vector against catalog size ({m['cores']} cores, {summary['when']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(summary: dict[str, Any], image: Path, docs: Path) -> str:
    c, m, rows = summary["config"], summary["machine"], summary["results"]

    def size(r: dict[str, Any]) -> str:
        return f"{r['capabilities']:,}" + (f" (of {r['asked']:,} asked: load stopped)" if "asked" in r else "")

    header = "| | " + " | ".join(size(r) for r in rows) + " |\n|---|" + "---:|" * len(rows)

    def line(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in rows) + " |"

    def mib(b: float) -> str:
        return f"{b / 2**20:,.0f} MiB"

    budget = VECTOR_BYTES + graph_bytes_per_capability(c["hnsw"]["m"])
    table = "\n".join(
        [
            header,
            line(
                "null RPC p50 / p99 ms (serial)",
                lambda r: f"{r['serial']['null']['p50_ms']:.3f} / {r['serial']['null']['p99_ms']:.3f}",
            ),
            line(
                "Discover p50 / p99 ms (serial)",
                lambda r: f"{r['serial']['discover']['p50_ms']:.3f} / {r['serial']['discover']['p99_ms']:.3f}",
            ),
            line(f"p50 / null (target <= {TARGET_P50:g})", lambda r: f"{r['ratio_vs_null']['p50']:.2f}"),
            line(f"p99 / null (target <= {TARGET_P99:g})", lambda r: f"{r['ratio_vs_null']['p99']:.2f}"),
            line(
                "null RPC calls/s, p50 / p99 ms under load",
                lambda r: (
                    f"{r['throughput']['null']['per_s']:,.0f}, "
                    f"{r['throughput']['null']['latency']['p50_ms']:.1f} / "
                    f"{r['throughput']['null']['latency']['p99_ms']:.1f}"
                ),
            ),
            line(
                "Discover calls/s, p50 / p99 ms under load",
                lambda r: (
                    f"{r['throughput']['discover']['per_s']:,.0f}, "
                    f"{r['throughput']['discover']['latency']['p50_ms']:.1f} / "
                    f"{r['throughput']['discover']['latency']['p99_ms']:.1f}"
                ),
            ),
            line(
                f"throughput / null (target >= {TARGET_THROUGHPUT:g})",
                lambda r: f"{r['ratio_vs_null']['throughput']:.2f}",
            ),
            line("recall@10 vs exact (same filter)", lambda r: f"{r['recall_at_10']:.4f}"),
            line("plan the server chose", lambda r: ", ".join(f"`{p}`" for p in sorted(r["plans"]))),
            line("server search stage p50 ms", lambda r: f"{r['server_search_p50_ms']:.3f}"),
            line(
                "exact search in-process p50 ms, 50% / all rows",
                lambda r: (
                    f"{r['exact_in_process']['filtered_50pct']['p50_ms']:.3f} / "
                    f"{r['exact_in_process']['all_rows']['p50_ms']:.3f}"
                ),
            ),
            line(
                "load: seconds, capabilities/s",
                lambda r: f"{r['load']['seconds']:,.1f} s, {r['load']['capabilities_per_s']:,.0f}/s",
            ),
            line(
                "server RSS empty / loaded / restarted",
                lambda r: (
                    f"{mib(r['memory']['rss_empty_bytes'])} / "
                    f"{mib(r['memory']['rss_loaded_bytes'])} / {mib(r['memory']['rss_restarted_bytes'])}"
                ),
            ),
            line("RSS per capability (whole process)", lambda r: f"{r['memory']['rss_per_capability']:,.0f} B"),
            line(
                "RSS added per capability, loaded / restarted",
                lambda r: (
                    f"{r['memory']['added_per_capability_loaded']:,.0f} / "
                    f"{r['memory']['added_per_capability_restarted']:,.0f} B"
                ),
            ),
            line(
                f"added / (vector + graph = {budget:,.0f} B) (target <= {TARGET_MEMORY:g})",
                lambda r: f"{r['memory']['ratio_added_loaded']:.2f} / {r['memory']['ratio_added_restarted']:.2f}",
            ),
            line(
                "snapshot on disk (vectors.npy + graph.bin + entries.json)",
                lambda r: mib(sum(r["memory"]["snapshot_file_bytes"].values())),
            ),
            line("first start (empty) s", lambda r: f"{r['cold_start']['empty_start_s']:.1f}"),
            line(
                "cold start to SERVING s (source)",
                lambda r: f"{r['cold_start']['seconds']:.1f} ({r['cold_start']['source'] or '?'})",
            ),
            line("of which index load (startup_seconds)", lambda r: f"{r['cold_start']['server_startup_seconds']:.2f}"),
            line("SIGTERM to exit (writes the snapshot) s", lambda r: f"{r['cold_start']['stop_s']:.1f}"),
            line(
                "1-minute load average (after load, after measuring)",
                lambda r: " / ".join(f"{v:.2f}" for v in r["loadavg_1m"]),
            ),
        ]
    )
    largest = rows[-1]

    def verdict(r: dict[str, Any]) -> str:
        ratio, memory, cold = r["ratio_vs_null"], r["memory"]["ratio_added_restarted"], r["cold_start"]
        return (
            f"- **{size(r)}:** p50 {ratio['p50']:.2f}x null ({yes(ratio['p50'] <= TARGET_P50)}), "
            f"p99 {ratio['p99']:.2f}x ({yes(ratio['p99'] <= TARGET_P99)}), throughput {ratio['throughput']:.2f} "
            f"of null ({yes(ratio['throughput'] >= TARGET_THROUGHPUT)}), memory {memory:.2f}x vectors+graph "
            f"after a restart ({yes(memory <= TARGET_MEMORY)}), cold start {cold['seconds']:.1f} s from "
            f"{cold['source']} ({yes(cold['seconds'] < TARGET_COLD_START_S)})."
        )

    verdicts = "\n".join(verdict(r) for r in rows)
    stopped = [
        f"- **{r['asked']:,} asked:** the load stopped at {r['stopped_early']} with {r['capabilities']:,} loaded; "
        "that column is measured there."
        for r in rows
        if "asked" in r
    ]
    not_run = [f"- **{s['capabilities']:,} not run:** {s['reason']}." for s in summary["skipped"]]
    skipped = "\n".join(stopped + not_run) or "- Every size asked for was loaded in full."
    image_link = image.relative_to(docs.parent).as_posix()
    notes = summary.get("notes", "")
    runs = "; ".join(
        f"Run finished {r['when']} at {r['machine'].get('revision', '?')} "
        f"(load average {r['machine']['loadavg_1m_at_start']} at start)"
        for r in summary.get("runs", [{"when": summary["when"], "machine": m}])
    )
    return f"""{START_MARK}
## Discover by vector from {rows[0]["capabilities"]:,} to {largest["capabilities"]:,} capabilities

Generated by `bench/scale.py`, which rewrites only this section. Targets (issue 10), all measured against
the null RPC of the same run: Discover p50 within {TARGET_P50:g}x, p99 within {TARGET_P99:g}x, throughput at
least {TARGET_THROUGHPUT:.0%} of the null RPC's; resident memory per capability within {TARGET_MEMORY:g}x the
raw vector bytes plus the HNSW graph; cold start from a snapshot under {TARGET_COLD_START_S:g} s at 1M.

{verdicts}
{skipped}

{table}

![Discover latency and throughput against N, beside the null RPC and exact search]({image_link})

How it was measured:

- **Per N, a fresh server:** `capreg serve` in its own process on SQLite (temp dir), default settings
  (HNSW M={c["hnsw"]["m"]}, ef_construction={c["hnsw"]["ef_construction"]}, ef_search={c["hnsw"]["ef_search"]}).
  The catalog is bench/discover.py's: {CAPS_PER_AGENT} capabilities per agent, 384-d unit vectors in topic
  clusters of ~{base.CLUSTER_SIZE}, two regions alternating. It is loaded through `RegisterAgents`,
  {c["batch_agents"]} agents ({c["batch_agents"] * CAPS_PER_AGENT:,} capabilities, ~2 MB, under the 4 MiB
  message limit) a call, {c["parallel"]} calls in flight; every capability carries its vector, so nothing is
  embedded. Load time runs from the first call to the last answer (each call returns once the index has
  the batch).
- **Latency:** one blocking client, {c["warmup"]} warm-up calls, then {c["queries"]:,} null RPCs and
  {c["queries"]:,} Discovers (`top_k=10`, `regions: [eu-west-1]`, which keeps 50%) interleaved call by call.
  **Throughput:** one `grpc.aio` channel, {c["concurrency"]} callers in a closed loop (as bench/discover.py),
  {c["rounds"]} x {c["duration_s"]:g} s per workload, alternating. **Recall@10:** every served top 10 against
  exact filtered search (numpy) over the same vectors.
- **Exact search:** `registry.index.exact.top_k` in the benchmark's process over the same N vectors, the 50%
  allowed rows and all rows: what a Discover would cost without the index, before any RPC.
- **Memory:** VmRSS of the server from /proc, empty (after start: interpreter, torch and the embedding model),
  after the load, and after the cold restart. The budget per capability is the raw vector ({VECTOR_BYTES:,} B)
  plus hnswlib's links ({graph_bytes_per_capability(c["hnsw"]["m"]):.0f} B: 2M 4-byte ids at level 0, and M on
  each upper level, which 1/(M-1) of the elements reach on average); "added" is RSS minus the empty
  server's, so the fixed cost of the model is left out.
- **Cold start:** SIGTERM (the server writes its snapshot), then a new `capreg serve` on the same data
  directory, timed from spawning it until it says it serves (printed right after gRPC health turns
  SERVING); `startup_seconds` and the source come from `GetIndexStatus`. The empty server's first start is
  beside it: the part every start pays (interpreter, imports, loading the model).

{notes}

Machine: {m["cpu"]}, {m["cores"]} cores, {m["os"]}, Python {m["python"]}, grpcio {m["grpcio"]}, numpy
{m["numpy"]}; 1-minute load average {m["loadavg_1m_at_start"]} at start (other work shares this machine).
{runs}. Command:

```
{summary["command"]}
.venv/bin/python bench/scale.py --smoke   # 1k only, short; writes no docs (tests/test_bench_scale_smoke.py)
```

The JSON summary on stdout holds every number above.
{END_MARK}
"""


def write_docs(summary: dict[str, Any], docs: Path, image: Path) -> None:
    plot(summary, image)
    text = docs.read_text() if docs.exists() else ""
    if START_MARK not in text and AFTER_HEADING in text:
        # First run: place the (empty) markers after the Discover-by-vector section, before the next marked one.
        heading = text.index(AFTER_HEADING)
        following = re.search(r"^<!-- ", text[heading:], re.M)
        if following is not None:
            at = heading + following.start()
            docs.write_text(text[:at] + f"{START_MARK}\n{END_MARK}\n\n" + text[at:])
    common.write_marked_section(docs, START_MARK, END_MARK, markdown(summary, image, docs))


# -- command line ------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", help="comma-separated capability counts (default 1000,10000,100000,1000000)")
    parser.add_argument("--queries", type=int, help="serial calls per workload and N (default 1000; 200 smoke)")
    parser.add_argument("--warmup", type=int, help="unmeasured calls per workload first (default 100; 30 smoke)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight for throughput")
    parser.add_argument("--duration", type=float, help="seconds per throughput round (default 5; 1 smoke)")
    parser.add_argument("--rounds", type=int, help="throughput rounds per workload (default 2; 1 smoke)")
    parser.add_argument("--batch-agents", type=int, default=100, help="agents per RegisterAgents call (<= 1000)")
    parser.add_argument("--parallel", type=int, default=2, help="RegisterAgents calls in flight")
    parser.add_argument(
        "--max-load-minutes", type=float, default=25.0,
        help="skip a size whose load, at the rate measured at the previous size, would take longer",
    )  # fmt: skip
    parser.add_argument(
        "--max-run-minutes", type=float, default=30.0,
        help="skip a size that, by the same extrapolation, would take the whole run past this",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="1k only, short, for CI: writes no docs")
    parser.add_argument("--docs", type=Path, help=f"Markdown to write (default {DOCS.relative_to(common.REPO)})")
    parser.add_argument("--no-docs", action="store_true", help="write neither the Markdown nor the plot")
    parser.add_argument("--notes", type=Path, help="Markdown to put in the section as the interpretation")
    parser.add_argument(
        "--from-summary", type=Path, nargs="+",
        help="measure nothing: write the docs from JSON summaries of earlier runs (their sizes merged, in order)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    smoke = bool(args.smoke)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else ((1000,) if smoke else DEFAULT_SIZES)
    config = Config(
        sizes=sizes,
        queries=args.queries or (200 if smoke else 1000),
        warmup=args.warmup if args.warmup is not None else (30 if smoke else 100),
        concurrency=args.concurrency,
        duration_s=args.duration or (1.0 if smoke else 5.0),
        rounds=args.rounds or (1 if smoke else 2),
        batch_agents=args.batch_agents,
        parallel=args.parallel,
        max_load_minutes=args.max_load_minutes,
        max_run_minutes=args.max_run_minutes,
        seed=args.seed,
        smoke=smoke,
    )
    if min(sizes) < 100 or config.queries < 1 or config.concurrency < 1 or not 1 <= config.batch_agents <= 1000:
        parser.error("need sizes >= 100, --queries >= 1, --concurrency >= 1 and 1 <= --batch-agents <= 1000")
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse(argv)
    summary = merge([json.loads(p.read_text()) for p in args.from_summary]) if args.from_summary else run(config)
    if args.from_summary:  # the runs' commands, then this one, which wrote the docs from their JSON
        summary["command"] += "\n" + shlex.join(["python", "bench/scale.py", *sys.argv[1:]])
    if args.notes:
        summary["notes"] = args.notes.read_text().strip()
    if not args.no_docs and (args.docs is not None or not config.smoke) and summary["results"]:
        docs: Path = (args.docs or DOCS).resolve()
        image = docs.parent / "img" / PLOT.name
        write_docs(summary, docs, image)
        err.print(f"wrote {docs} and {image}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
