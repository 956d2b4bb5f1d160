"""What tracing and metrics cost a Discover: one server, its telemetry switched off and on between rounds
(interleaved, so the machine's drift hits both alike), Discover by vector over gRPC, serially.

"off" is the default: no exporter configured, the no-op tracer and meter behind the same code paths.
"on" records every span and metric, as with an exporter (a span exporter that drops what it gets, and an
in-memory metric reader, so the figure is the server's own cost, not a collector's).

    .venv/bin/python bench/telemetry_overhead.py            # 1,000 capabilities, 6 rounds of 1,000 calls
    .venv/bin/python bench/telemetry_overhead.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from capreg.v1 import agent_pb2
from capreg_client import CapregClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

if __package__ in (None, ""):  # run as `python bench/telemetry_overhead.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import LatencyStats, scratch_dir
from registry import telemetry
from registry.app import App, build_app
from registry.config import Settings
from registry.telemetry_setup import TelemetryExporters

DIM = 384
T = TypeVar("T")


class DroppingExporter(SpanExporter):
    """Takes every finished span and keeps none: the server's side of exporting, without a collector."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


class Served:
    """The app on an event loop in a thread of this process."""

    def __init__(self, settings: Settings, exporters: TelemetryExporters):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app: App = self.run(build_app(settings, exporters=exporters))
        self.port = self.run(self.app.start())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(300)

    def stop(self) -> None:
        self.run(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def unit_vectors(count: int, rng: np.random.Generator) -> np.ndarray[Any, np.dtype[np.float32]]:
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    unit: np.ndarray[Any, np.dtype[np.float32]] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def measure(client: CapregClient, queries: np.ndarray[Any, np.dtype[np.float32]]) -> list[int]:
    samples = []
    for query in queries:
        values = query.tolist()
        started = time.perf_counter_ns()
        client.discover(vector=values, top_k=5)
        samples.append(time.perf_counter_ns() - started)
    return samples


class _Context:
    """The one thing the interceptor asks a servicer context: the status code (none: the call went well)."""

    def code(self) -> None:
        return None


def interceptor_cost_us(calls: int = 100_000) -> float:
    """Microseconds the per-RPC telemetry wrapper costs when telemetry is off: a span started and ended on
    the no-op tracer, the context attached and detached, the no-op histogram recorded."""
    from registry.transport.telemetry_interceptor import _Call

    attributes = {"rpc.system": "grpc", "rpc.service": "capreg.v1.DiscoveryService", "rpc.method": "Discover"}
    context: Any = _Context()
    started = time.perf_counter()
    for _ in range(calls):
        with _Call("/capreg.v1.DiscoveryService/Discover", {}, attributes, context):
            pass
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run: 200 capabilities, 2 rounds of 100")
    parser.add_argument("--capabilities", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000, help="Discover calls per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, alternating off and on")
    args = parser.parse_args()
    if args.smoke:
        args.capabilities, args.calls, args.rounds = 200, 100, 2
    rng = np.random.default_rng(7)
    spans = DroppingExporter()
    with scratch_dir() as scratch:
        settings = Settings(
            host="127.0.0.1", port=0, data_dir=scratch, auth_enabled=False, snapshot_interval_s=0, metrics_port=None
        )
        served = Served(settings, TelemetryExporters(spans=spans, metrics=InMemoryMetricReader()))
        on = served.app.telemetry
        assert on is not None
        try:
            with CapregClient(f"127.0.0.1:{served.port}", timeout=30) as client:
                for start in range(0, args.capabilities, 100):
                    for i, vector in enumerate(unit_vectors(min(100, args.capabilities - start), rng)):
                        cap = agent_pb2.Capability(
                            name="act", version="1.0.0", description="acts", vector=agent_pb2.Vector(values=vector)
                        )
                        client.register_agent(
                            agent_pb2.Agent(
                                name=f"agent-{start + i}", kind=agent_pb2.AGENT_KIND_TOOL, capabilities=[cap]
                            )
                        )
                queries = unit_vectors(args.calls, rng)
                measure(client, queries[: min(200, args.calls)])  # warm up
                samples: dict[str, list[int]] = {"off": [], "on": []}
                for round_number in range(args.rounds):
                    mode = "on" if round_number % 2 else "off"
                    (telemetry.install if mode == "on" else telemetry.uninstall)(on)
                    samples[mode] += measure(client, queries)
                telemetry.uninstall(on)
        finally:
            served.stop()
    stats = {mode: LatencyStats.of(values) for mode, values in samples.items()}
    result = {
        "capabilities": args.capabilities,
        "calls_per_mode": len(samples["off"]),
        "off": stats["off"].as_dict(),
        "on": stats["on"].as_dict(),
        "p50_on_over_off": round(stats["on"].p50_ms / stats["off"].p50_ms, 3),
        "spans_exported_while_on": spans.exported,
        "off_wrapper_us_per_call": round(interceptor_cost_us(), 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
