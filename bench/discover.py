"""Discover-by-vector benchmark: 10k capabilities registered with given vectors, Discover over gRPC beside a
null RPC (the gRPC health Check) measured in the same run, so the ratio says what Discover itself costs on
top of the transport, whatever the machine.

    python bench/discover.py                 # 10k capabilities, 2000 queries; rewrites docs/benchmarks.md
    python bench/discover.py --smoke         # 1k capabilities, 200 queries, < 60 s; writes no docs
    python bench/discover.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The server is the real `capreg serve` in its own process (the load generator must not share its GIL);
progress goes to stderr, a JSON summary to stdout.
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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from capreg.v1 import agent_pb2, discovery_pb2
from capreg_client import AsyncCapregClient, CapregClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if __package__ in (None, ""):  # run as `python bench/discover.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common
from registry.config import Settings

DEFAULTS = Settings()  # the server runs with these: the docs quote them

DIM = 384  # all-MiniLM-L6-v2, the serving space's dimension
TOP_K = 10
CAPS_PER_AGENT = 10
CLUSTER_SIZE = 100  # capabilities per topic cluster, on average
SPREAD = 1.0  # noise norm around a cluster centre: same-cluster cosine ~0.5, unrelated ~0
REGIONS = ("eu-west-1", "us-east-1")  # alternate, so a one-region filter keeps exactly half
KINDS = (agent_pb2.AGENT_KIND_AGENT, agent_pb2.AGENT_KIND_MODEL, agent_pb2.AGENT_KIND_TOOL)
FILTER = discovery_pb2.DiscoverFilters(regions=[REGIONS[0]])
WORKLOADS = ("null", "discover", "discover_filtered")
LABELS = {
    "null": "null RPC (health Check)",
    "discover": "Discover by vector, top_k=10",
    "discover_filtered": "Discover by vector, top_k=10, region filter (50%)",
}
SHORT = {"null": "null RPC", "discover": "unfiltered", "discover_filtered": "filtered"}
TARGET_P50_RATIO = 3.0
DOCS = common.REPO / "docs" / "benchmarks.md"
PLOT = common.REPO / "docs" / "img" / "discover_latency.png"

err = Console(stderr=True)
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Config:
    n: int
    queries: int
    warmup: int
    concurrency: int
    duration_s: float
    rounds: int
    seed: int
    database_url: str | None
    smoke: bool


# -- the catalog -------------------------------------------------------------------------------------


def unit(x: npt.NDArray[np.floating[Any]]) -> Vectors:
    result: Vectors = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return result


def make_vectors(n: int, queries: int, seed: int) -> tuple[Vectors, Vectors]:
    """Seeded unit vectors in topic clusters, like embeddings of real capabilities (uniform random vectors
    are all nearly orthogonal, which is unrealistically easy for exact and unrealistically hard for HNSW)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(1, n // CLUSTER_SIZE), DIM)))

    def sample(count: int) -> Vectors:
        members = rng.integers(len(centres), size=count)
        return unit(centres[members] + SPREAD * rng.standard_normal((count, DIM)) / math.sqrt(DIM))

    return sample(n), sample(queries)


def agent_name(a: int) -> str:
    return f"bench-{a:05d}"


def row_of(agent: str, capability: str) -> int:
    """Our row number of a served match, from the names we gave it."""
    return int(agent.removeprefix("bench-")) * CAPS_PER_AGENT + int(capability.removeprefix("skill-"))


def make_agent(a: int, vectors: Vectors) -> agent_pb2.Agent:
    rows = range(a * CAPS_PER_AGENT, min((a + 1) * CAPS_PER_AGENT, len(vectors)))
    capabilities = [
        agent_pb2.Capability(
            name=f"skill-{i - a * CAPS_PER_AGENT:02d}",
            version="1.0.0",
            description=f"Synthetic capability {i} for the Discover benchmark.",
            examples=[f"benchmark task {i}"],
            tags=["bench", f"group-{i % 50}"],
            input_modes=["text"],
            output_modes=["text"],
            cost=agent_pb2.Cost(per_call_usd=0.001, per_1k_input_tokens_usd=0.0005),
            latency_p50_ms=50.0 + i % 200,
            regions=[REGIONS[i % len(REGIONS)]],
            vector=agent_pb2.Vector(values=vectors[i].tolist()),
        )
        for i in rows
    ]
    return agent_pb2.Agent(
        name=agent_name(a),
        kind=KINDS[a % len(KINDS)],
        endpoint=f"https://{agent_name(a)}.bench.example.com",
        labels={"team": f"team-{a % 7}"},
        description="A synthetic agent registered by bench/discover.py.",
        capabilities=capabilities,
    )


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )


def register(client: CapregClient, vectors: Vectors) -> float:
    """Register every agent, one call at a time (the write path is not what we measure); returns seconds."""
    agents = math.ceil(len(vectors) / CAPS_PER_AGENT)
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"registering {len(vectors)} capabilities", total=agents)
        for a in range(agents):
            response = client.register_agent(make_agent(a, vectors), timeout=60)
            if not response.created:
                raise RuntimeError(f"{agent_name(a)} already existed: the database was not empty")
            bar.advance(task)
    return time.perf_counter() - started


def discover_request(query: Vectors, filtered: bool) -> discovery_pb2.DiscoverRequest:
    return discovery_pb2.DiscoverRequest(
        vector=agent_pb2.Vector(values=query.tolist()), top_k=TOP_K, filters=FILTER if filtered else None
    )


# -- measurements ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Served:
    """What the server said about one Discover: for recall, the plan it chose and its own time."""

    rows: list[int]
    plan: str
    server_ms: dict[str, float]


def served(response: discovery_pb2.DiscoverResponse) -> Served:
    return Served(
        rows=[row_of(m.agent_name, m.capability.name) for m in response.matches],
        plan=response.explanation.plan,
        server_ms={t.stage: t.ms for t in response.explanation.timings},
    )


@dataclass(slots=True)
class SerialRun:
    latencies_ns: dict[str, list[int]]
    answers: dict[str, list[Served]]


def measure_serial(
    client: CapregClient, requests: dict[str, list[discovery_pb2.DiscoverRequest]], count: int, warmup: int
) -> SerialRun:
    """One caller, one call in flight. The workloads are interleaved call by call, in rotating order, so
    background noise on a shared machine falls on all of them alike."""

    def null(i: int) -> None:
        client.health()

    def discover(workload: str) -> Callable[[int], discovery_pb2.DiscoverResponse]:
        return lambda i: client.discover_request(requests[workload][i])

    calls: dict[str, Callable[[int], discovery_pb2.DiscoverResponse | None]] = {
        "null": null,
        "discover": discover("discover"),
        "discover_filtered": discover("discover_filtered"),
    }
    for i in range(warmup):
        for call in calls.values():
            call(i % count)
    run = SerialRun({w: [] for w in WORKLOADS}, {w: [] for w in WORKLOADS if w != "null"})
    with progress() as bar:
        task = bar.add_task("serial latency", total=count)
        for i in range(count):
            for k in range(len(WORKLOADS)):
                workload = WORKLOADS[(i + k) % len(WORKLOADS)]
                started = time.perf_counter_ns()
                response = calls[workload](i)
                run.latencies_ns[workload].append(time.perf_counter_ns() - started)
                if response is not None:
                    run.answers[workload].append(served(response))
            bar.advance(task)
    return run  # answers are in query order, for recall


@dataclass(slots=True)
class LoadResult:
    calls: int
    seconds: float
    latencies_ns: list[int]

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


async def closed_loop(call: Callable[[int], Awaitable[object]], concurrency: int, duration_s: float) -> LoadResult:
    """`concurrency` callers, each sending its next call as soon as the last one is answered."""
    counter = itertools.count()
    latencies: list[int] = []
    deadline = time.perf_counter() + duration_s

    async def caller() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter_ns()
            await call(next(counter))
            latencies.append(time.perf_counter_ns() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return LoadResult(len(latencies), time.perf_counter() - started, latencies)


async def measure_throughput(
    target: str, requests: dict[str, list[discovery_pb2.DiscoverRequest]], config: Config, api_key: str | None = None
) -> dict[str, LoadResult]:
    """Closed-loop load from one asyncio client over one channel; rounds alternate the workloads so noise
    is shared, and each workload gets a short unmeasured warm-up first."""
    totals = {w: LoadResult(0, 0.0, []) for w in WORKLOADS}
    async with AsyncCapregClient(target, timeout=30, api_key=api_key) as client:

        def call_for(workload: str) -> Callable[[int], Awaitable[object]]:
            if workload == "null":
                return lambda i: client.health()
            batch = requests[workload]
            return lambda i: client.discover_request(batch[i % len(batch)])

        for workload in WORKLOADS:
            await closed_loop(call_for(workload), config.concurrency, min(1.0, config.duration_s / 4))
        for r in range(config.rounds):
            for k in range(len(WORKLOADS)):
                workload = WORKLOADS[(r + k) % len(WORKLOADS)]
                err.print(f"throughput round {r + 1}/{config.rounds}: {workload}, {config.concurrency} in flight")
                result = await closed_loop(call_for(workload), config.concurrency, config.duration_s)
                total = totals[workload]
                total.calls += result.calls
                total.seconds += result.seconds
                total.latencies_ns += result.latencies_ns
    return totals


def exact_top_k(vectors: Vectors, queries: Vectors, allowed: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
    """The true k nearest allowed rows of every query, by brute force in chunks."""
    out = np.empty((len(queries), k), dtype=np.int64)
    candidates = vectors[allowed]
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ candidates.T
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out[start : start + 256] = allowed[best]
    return out


def recall_at_k(answers: Sequence[Served], truth: npt.NDArray[np.int64]) -> float:
    k = int(truth.shape[1])
    hits = [len(set(a.rows) & set(t.tolist())) for a, t in zip(answers, truth, strict=True)]
    return float(np.mean(hits)) / k


# -- the run -----------------------------------------------------------------------------------------


@contextmanager
def database(config: Config) -> Iterator[str | None]:
    if config.database_url is None:
        yield None  # the server's embedded SQLite in its data dir
        return
    with common.throwaway_pg_database(config.database_url) as url:
        yield url


def run(config: Config) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.float64]]]:
    """Returns the summary (JSON-ready) and the serial latencies in ms, for the plot."""
    err.print(f"[bold]Discover benchmark[/bold]: {config.n} capabilities, {config.queries} queries")
    vectors, queries = make_vectors(config.n, config.queries, config.seed)
    requests = {
        "discover": [discover_request(q, filtered=False) for q in queries],
        "discover_filtered": [discover_request(q, filtered=True) for q in queries],
    }
    machine = common.machine()
    with common.scratch_dir() as scratch, database(config) as url:
        err.print("starting `capreg serve` (loads the embedding model) ...")
        with common.ServerProcess(scratch / "data", url) as server:
            if server.capabilities_at_start:
                raise RuntimeError(f"the database already holds {server.capabilities_at_start} capabilities")
            with CapregClient(server.target, timeout=30, api_key=server.api_key) as client:
                client.health(timeout=30)
                register_s = register(client, vectors)
                serial = measure_serial(client, requests, config.queries, config.warmup)
            load = asyncio.run(measure_throughput(server.target, requests, config, server.api_key))
            server_pid = server.pid

    truth = exact_top_k(vectors, queries, np.arange(config.n, dtype=np.int64), TOP_K)
    even = np.flatnonzero(np.arange(config.n) % len(REGIONS) == 0).astype(np.int64)
    truth_filtered = exact_top_k(vectors, queries, even, TOP_K)
    stats = {w: common.LatencyStats.of(serial.latencies_ns[w]) for w in WORKLOADS}
    load_stats = {w: common.LatencyStats.of(load[w].latencies_ns) for w in WORKLOADS}
    null = stats["null"]
    summary: dict[str, Any] = {
        "benchmark": "discover_by_vector",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/discover.py", *sys.argv[1:]]),
        "config": {
            "capabilities": config.n,
            "agents": math.ceil(config.n / CAPS_PER_AGENT),
            "dim": DIM,
            "top_k": TOP_K,
            "queries": config.queries,
            "warmup": config.warmup,
            "concurrency": config.concurrency,
            "duration_s": config.duration_s,
            "rounds": config.rounds,
            "seed": config.seed,
            "database": "postgresql (throwaway database)" if url else "sqlite (embedded, temp dir)",
            "smoke": config.smoke,
        },
        "machine": machine,
        "server_pid": server_pid,
        "register_s": round(register_s, 2),
        "serial": {w: stats[w].as_dict() for w in WORKLOADS},
        "throughput": {
            w: {"calls": load[w].calls, "seconds": round(load[w].seconds, 2), "per_s": round(load[w].per_second, 1)}
            | {"latency": load_stats[w].as_dict()}
            for w in WORKLOADS
        },
        "ratio_vs_null": {
            w: {
                "p50": round(stats[w].p50_ms / null.p50_ms, 2),
                "p99": round(stats[w].p99_ms / null.p99_ms, 2),
                "throughput": round(load[w].per_second / load["null"].per_second, 3),
            }
            for w in WORKLOADS
            if w != "null"
        },
        "recall_at_10": {
            "discover": round(recall_at_k(serial.answers["discover"], truth), 4),
            "discover_filtered": round(recall_at_k(serial.answers["discover_filtered"], truth_filtered), 4),
        },
        "plans": {w: dict(Counter(a.plan for a in serial.answers[w])) for w in serial.answers},
        "server_stage_p50_ms": {
            w: {
                stage: round(float(np.median([a.server_ms.get(stage, 0.0) for a in serial.answers[w]])), 4)
                for stage in ("filter", "search", "rank", "total")
            }
            for w in serial.answers
        },
    }
    summary["target"] = {
        "p50_ratio_max": TARGET_P50_RATIO,
        "met": summary["ratio_vs_null"]["discover"]["p50"] <= TARGET_P50_RATIO,
    }
    return summary, {w: np.asarray(serial.latencies_ns[w], dtype=np.float64) / 1e6 for w in WORKLOADS}


# -- the report --------------------------------------------------------------------------------------


def plot(summary: dict[str, Any], latencies_ms: dict[str, npt.NDArray[np.float64]], path: Path) -> None:
    """Latency CDF of the serial run and throughput under load, null RPC beside Discover."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colours = {"null": "tab:gray", "discover": "tab:blue", "discover_filtered": "tab:orange"}
    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for workload in WORKLOADS:
        ms = np.sort(latencies_ms[workload])
        cdf.plot(ms, np.arange(1, ms.size + 1) / ms.size, label=LABELS[workload], color=colours[workload])
    for q, style in ((0.5, ":"), (0.99, "--")):
        cdf.axhline(q, color="black", linewidth=0.6, linestyle=style)
        cdf.text(0.005, q, f"p{q * 100:g}", transform=cdf.get_yaxis_transform(), va="bottom", fontsize=7)
    cdf.set_xscale("log")
    cdf.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    cdf.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    cdf.set_xlabel("latency, ms (log scale)")
    cdf.set_ylabel("fraction of calls")
    cdf.set_title(f"One caller, {summary['config']['queries']} calls each (interleaved)")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(loc="lower right", fontsize=8)
    per_s = [summary["throughput"][w]["per_s"] for w in WORKLOADS]
    drawn = bars.bar(["null", "discover", "discover\n+filter"], per_s, color=[colours[w] for w in WORKLOADS])
    bars.bar_label(drawn, labels=[f"{v:,.0f}/s" for v in per_s], fontsize=8)
    bars.set_ylabel("calls per second")
    bars.set_title(f"Throughput, {summary['config']['concurrency']} in flight")
    fig.suptitle(
        f"capreg Discover by vector at {summary['config']['capabilities']:,} capabilities "
        f"({summary['machine']['cores']} cores, {summary['when']})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict[str, Any], image: Path, docs: Path) -> str:
    c, m, s, t, r = (summary[k] for k in ("config", "machine", "serial", "throughput", "ratio_vs_null"))
    recall, plans, stages = summary["recall_at_10"], summary["plans"], summary["server_stage_p50_ms"]
    verdict = "met" if summary["target"]["met"] else "**not met**"

    def ratio(w: str, key: str) -> str:
        return "1" if w == "null" else f"{r[w][key]:.2f}"

    serial_rows = "\n".join(
        f"| {LABELS[w]} | {s[w]['p50_ms']:.3f} | {s[w]['p90_ms']:.3f} | {s[w]['p99_ms']:.3f} | "
        f"{s[w]['mean_ms']:.3f} | {ratio(w, 'p50')} | {ratio(w, 'p99')} |"
        for w in WORKLOADS
    )
    load_rows = "\n".join(
        f"| {LABELS[w]} | {t[w]['per_s']:,.0f} | {t[w]['latency']['p50_ms']:.2f} | {t[w]['latency']['p99_ms']:.2f} | "
        f"{ratio(w, 'throughput')} |"
        for w in WORKLOADS
    )
    plan_text = "; ".join(
        f"{SHORT[w]}: " + ", ".join(f"`{p}` x{n:,}" for p, n in sorted(plans[w].items())) for w in plans
    )
    stage_rows = "\n".join(
        f"| {LABELS[w]} | {st['filter']:.3f} | {st['search']:.3f} | {st['rank']:.3f} | {st['total']:.3f} | "
        f"{s[w]['p50_ms']:.3f} | {s[w]['p50_ms'] - st['total']:.3f} |"
        for w, st in stages.items()
    )
    outside = s["discover"]["p50_ms"] - stages["discover"]["total"]
    image_link = image.relative_to(docs.parent).as_posix()
    return f"""# Benchmarks

Generated by `bench/discover.py`; rerun it to refresh this page (it rewrites the whole file except the
sections other benchmarks own, between `<!-- <name>:start -->` and `<!-- <name>:end -->` markers).
Numbers come from a small shared machine, so read the **ratios to the null RPC** measured in the same run,
not the absolute milliseconds.

## Discover by vector at {c["capabilities"]:,} capabilities

**Target:** Discover by vector at 10k capabilities has a p50 within {TARGET_P50_RATIO:g}x the null RPC of
the same run. **This run: {r["discover"]["p50"]:.2f}x, target {verdict}.** (With a 50% region filter,
which the target does not cover: {r["discover_filtered"]["p50"]:.2f}x.)

### Method

- **Server:** the real `capreg serve --port 0` in its own process (so the load generator does not share
  its GIL), {c["database"]}, default settings (HNSW M={DEFAULTS.hnsw_m}, ef_search={DEFAULTS.hnsw_ef_search},
  exact scoring up to {DEFAULTS.exact_always_rows} allowed rows, or up to {DEFAULTS.exact_max_rows} when
  under {DEFAULTS.hnsw_min_selectivity:.0%} of the catalog is allowed). The server loads the embedding model
  as in production, but never calls it: every
  capability brings its own vector and every query is a vector.
- **Catalog:** {c["agents"]:,} agents x {CAPS_PER_AGENT} capabilities = {c["capabilities"]:,} capabilities,
  each with a {c["dim"]}-d unit vector drawn around one of {max(1, c["capabilities"] // CLUSTER_SIZE)} topic
  centres (seed {c["seed"]}; same-cluster cosine ~0.5, unrelated ~0), plus realistic metadata (tags, modes,
  cost, latency, one of two regions, labels). Registration took {summary["register_s"]:.0f} s
  (1 call at a time; not part of the measurement).
- **Null RPC:** the gRPC health `Check`, a real unary RPC through the same server, interceptor and client
  channel that does no work: the floor any RPC pays.
- **Serial latency:** one blocking `CapregClient`, one call in flight, {c["warmup"]} warm-up calls each,
  then {c["queries"]:,} calls of each workload interleaved call by call in rotating order (so background
  load hits them alike). Each Discover uses a different query vector (same distribution as the catalog),
  `top_k={c["top_k"]}`. The filtered workload adds `regions: [{REGIONS[0]}]`, which keeps exactly 50%.
  Time is measured around the client call: request serialisation, both network hops, server work and
  response parsing.
- **Throughput:** one `grpc.aio` client (`AsyncCapregClient`, one channel), {c["concurrency"]} callers in
  a closed loop, {c["rounds"]} rounds x {c["duration_s"]:g} s per workload, workloads alternating. Client and
  server share the machine's {m["cores"]} cores, so this is what one box does end to end, not the server's
  ceiling.
- **Recall@10:** every served top 10 of the serial run against exact brute force (numpy) over the same
  vectors, with the same filter. All capabilities share the default quality prior, so the ranking score
  orders exactly as similarity does.

### Machine

| | |
|---|---|
| CPU | {m["cpu"]}, {m["cores"]} cores |
| OS | {m["os"]} |
| Python / grpcio / numpy | {m["python"]} / {m["grpcio"]} / {m["numpy"]} |
| 1-minute load average at start | {m["loadavg_1m_at_start"]} (other work shares this machine) |
| Run | {summary["when"]} |

Command:

```
{summary["command"]}
```

### Results

Serial latency (ms), one call in flight:

| Workload | p50 | p90 | p99 | mean | p50 / null | p99 / null |
|---|---:|---:|---:|---:|---:|---:|
{serial_rows}

Throughput, {c["concurrency"]} in flight (latency under load in ms):

| Workload | calls/s | p50 | p99 | calls/s / null |
|---|---:|---:|---:|---:|
{load_rows}

Accuracy and plan:

- Recall@10 against exact search: **{recall["discover"]:.4f}** unfiltered, **{recall["discover_filtered"]:.4f}**
  with the 50% region filter.
- Plans the server reported (`explanation.plan`): {plan_text}.
- The vectors are synthetic and well clustered: this recall shows the HNSW path is wired
  and tuned sensibly (ef_search={DEFAULTS.hnsw_ef_search} over M={DEFAULTS.hnsw_m}), not the recall real
  embeddings would get.

Where the server spends a Discover (p50 of the stage timings in `explanation.timings`, ms), beside the
client-observed p50:

| Workload | filter | search | rank | server total | client p50 | client p50 - server total |
|---|---:|---:|---:|---:|---:|---:|
{stage_rows}

The last column is time outside the stages the server times: gRPC, protobuf and conversion on both sides.
The null RPC pays {s["null"]["p50_ms"]:.3f} ms of that kind; the other {outside - s["null"]["p50_ms"]:.3f} ms
(unfiltered) come from Discover's larger messages (384 floats in, ten matches with their capabilities out)
and from turning them into domain objects and back, which `explanation.timings` does not cover.
Serial p99s on a shared 2-core machine mostly measure the neighbours; compare p50s.

![Latency CDF and throughput, null RPC vs Discover]({image_link})

### Reproduce

```
make bench                                   # = .venv/bin/python bench/discover.py
.venv/bin/python bench/discover.py --smoke   # 1k capabilities, 200 queries, < 60 s, writes no docs
.venv/bin/python bench/discover.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
```

`--database-url` creates a throwaway database on that PostgreSQL server, migrates it, and drops it at the
end; it never touches the database the URL names. `--max-p50-ratio 3` makes the exit status fail when
the target is missed. The JSON summary on stdout holds every number above.
"""


KEPT_SECTION = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", re.S)


def kept_sections(docs: Path) -> str:
    """Sections of the page that other benchmarks write between their markers: a rewrite keeps them, at the end."""
    if not docs.exists():
        return ""
    return "".join(f"\n{m.group(0)}\n" for m in KEPT_SECTION.finditer(docs.read_text()))


# -- command line ------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, help="capabilities to register (default 10000; 1000 with --smoke)")
    parser.add_argument("--queries", type=int, help="serial calls per workload (default 2000; 200 with --smoke)")
    parser.add_argument("--warmup", type=int, help="unmeasured calls per workload first (default 200; 50 smoke)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight for throughput")
    parser.add_argument("--duration", type=float, help="seconds per throughput round (default 5; 1 with --smoke)")
    parser.add_argument("--rounds", type=int, help="throughput rounds per workload (default 2; 1 with --smoke)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--database-url", help="a postgresql:// URL: run on a throwaway database on that server (default SQLite)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI: fast, writes no docs")
    parser.add_argument("--docs", type=Path, help=f"Markdown to write (default {DOCS.relative_to(common.REPO)})")
    parser.add_argument("--no-docs", action="store_true", help="write neither the Markdown nor the plot")
    parser.add_argument("--max-p50-ratio", type=float, help="exit 1 when Discover p50 / null p50 exceeds this")
    args = parser.parse_args(argv)
    smoke = bool(args.smoke)
    config = Config(
        n=args.n or (1000 if smoke else 10_000),
        queries=args.queries or (200 if smoke else 2000),
        warmup=args.warmup if args.warmup is not None else (50 if smoke else 200),
        concurrency=args.concurrency,
        duration_s=args.duration or (1.0 if smoke else 5.0),
        rounds=args.rounds or (1 if smoke else 2),
        seed=args.seed,
        database_url=args.database_url,
        smoke=smoke,
    )
    if config.n < TOP_K or config.queries < 1 or config.concurrency < 1:
        parser.error("need --n >= 10, --queries >= 1 and --concurrency >= 1")
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse(argv)
    summary, latencies_ms = run(config)
    write_docs = not args.no_docs and (args.docs is not None or not config.smoke)
    if write_docs:
        docs: Path = (args.docs or DOCS).resolve()
        image = docs.parent / "img" / PLOT.name
        plot(summary, latencies_ms, image)
        docs.write_text(markdown(summary, image, docs) + kept_sections(docs))
        err.print(f"wrote {docs} and {image}")
    print(json.dumps(summary, indent=2))
    ratio = summary["ratio_vs_null"]["discover"]["p50"]
    err.print(
        f"Discover p50 {summary['serial']['discover']['p50_ms']:.3f} ms = {ratio:.2f}x null "
        f"{summary['serial']['null']['p50_ms']:.3f} ms; recall@10 {summary['recall_at_10']['discover']:.4f}"
    )
    if args.max_p50_ratio is not None and ratio > args.max_p50_ratio:
        err.print(f"[red]Discover p50 is {ratio:.2f}x the null RPC, above --max-p50-ratio {args.max_p50_ratio}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
