"""Traces, metrics and logs of a real server: the span tree of a Discover (with the caller's trace as its
parent), the spans of a registration, every metric the runbook names (read in memory and scraped from the
Prometheus endpoint), JSON logs with trace ids and without secrets, and nothing recorded when it is off."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
from capreg.v1 import discovery_pb2_grpc
from capreg_client import CapregClient, CapregError, discover_request
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from registry import telemetry
from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.logs import JsonFormatter, redact
from registry.telemetry_setup import TelemetryExporters
from tests.support import ServerThread, make_agent, make_capability, running_server

TENANT = "traced"
DISCOVER = "/capreg.v1.DiscoveryService/Discover"
REGISTER = "/capreg.v1.RegistryService/RegisterAgent"


class Observed:
    def __init__(self, server: ServerThread, spans: InMemorySpanExporter, metrics: InMemoryMetricReader):
        self.server = server
        self.spans = spans
        self.metrics = metrics

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def metric_points(self) -> dict[str, list[Any]]:
        data = self.metrics.get_metrics_data()
        found: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def observed(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Observed]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    data = tmp_path / "data"
    with running_server(
        data,
        f"sqlite:///{data / 'capreg.db'}",
        embedder,
        exporters=TelemetryExporters(spans=spans, metrics=metrics),
        metrics_port=0,
        lease_grace_s=0,
        lease_sweep_s=3600,
    ) as server:
        yield Observed(server, spans, metrics)
    assert telemetry.current() is telemetry.NOOP  # stopping the server took its telemetry out


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    return {s.name: s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id}


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_a_discover_is_a_span_tree_under_the_callers_trace(observed: Observed) -> None:
    with CapregClient(observed.server.target, timeout=30) as client:
        client.register_agent(make_agent("tracer", make_capability("trace-requests"), tenant=TENANT))
        budget = client.create_budget("traced-budget", 5.0, tenant=TENANT).budget
        observed.spans.clear()
        caller = TracerProvider().get_tracer("the-orchestrator")
        with caller.start_as_current_span("route a task") as parent:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # W3C traceparent, as any OpenTelemetry-instrumented client sends it
            request = discover_request("please trace-requests", tenant=TENANT, top_k=3, budget_id=budget.id)
            with grpc.insecure_channel(observed.server.target) as channel:
                stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
                answer = stub.Discover(request, metadata=tuple(carrier.items()), timeout=30)
        assert answer.matches[0].agent_name == "tracer"
    spans = observed.finished()
    rpc = only(spans, DISCOVER)
    assert rpc.kind == SpanKind.SERVER
    assert rpc.context is not None and rpc.parent is not None
    assert rpc.context.trace_id == parent.get_span_context().trace_id  # the caller's trace
    assert rpc.parent.span_id == parent.get_span_context().span_id
    attributes = dict(rpc.attributes or {})
    assert attributes["rpc.method"] == "Discover" and attributes["rpc.grpc.status_code"] == 0
    assert attributes["capreg.top_k"] == 3 and attributes["capreg.tenant"] == TENANT
    assert attributes["capreg.plan"] == "exact" and attributes["capreg.space"] == "minilm-l6-v2"
    assert attributes["capreg.candidates"] == 1
    under = children(spans, rpc)
    assert {"embed", "database", "constraint_mask", "plan", "rank"} <= set(under)
    assert set(children(spans, under["plan"])) == {"index_search"}
    assert dict(under["plan"].attributes or {})["capreg.plan"] == "exact"
    # Children run inside the RPC, in order: embed and the budget's database read, then mask, search, rank.
    order = [under[name].start_time or 0 for name in ("embed", "constraint_mask", "plan", "rank")]
    assert order == sorted(order)


def test_a_registration_traces_embedding_database_and_the_change_log(observed: Observed) -> None:
    with CapregClient(observed.server.target, timeout=30) as client:
        client.register_agent(make_agent("writer", make_capability("write-things"), tenant=TENANT))
    spans = observed.finished()
    rpc = only(spans, REGISTER)
    under = children(spans, rpc)
    assert {"embed", "database", "wait_for_index"} <= set(under)
    applied = [s for s in spans if s.name == "changelog.apply"]
    assert applied and all(int(str(dict(s.attributes or {})["capreg.changes"])) >= 1 for s in applied)


def test_every_metric_is_recorded_and_scraped(observed: Observed) -> None:
    with CapregClient(observed.server.target, timeout=30) as client:
        leased = make_agent("short-lived", make_capability("expire-soon"), tenant=TENANT)
        leased.lease_ttl.FromSeconds(1)
        agent = client.register_agent(leased).agent
        client.discover("please expire-soon", tenant=TENANT)
        with pytest.raises(CapregError):
            client.discover("x", tenant=TENANT, top_k=1000)  # INVALID_ARGUMENT, measured too
        budget = client.create_budget("metered", 1.0, tenant=TENANT).budget
        reservation = client.reserve(budget.id, 0.5, tenant=TENANT).reservation
        client.commit(reservation.id, tenant=TENANT)
        with pytest.raises(CapregError):
            client.reserve(budget.id, 5.0, tenant=TENANT)  # more than is left
        # A lease runs on the clock: let its 1 s pass, then sweep (the server's own sweeper is idle here).
        expires = agent.lease_expire_time.ToDatetime(tzinfo=UTC).timestamp()
        time.sleep(max(expires - time.time(), 0.0) + 0.01)
        assert observed.server.run(observed.server.app.registry.remove_expired(0)) == 1
        with pytest.raises(CapregError) as gone:
            client.get_agent(id=agent.id)
        assert gone.value.code == grpc.StatusCode.NOT_FOUND
    points = observed.metric_points()
    durations = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]) for p in points["rpc.server.duration"]
    }
    assert (DISCOVER, "OK") in durations and (DISCOVER, "INVALID_ARGUMENT") in durations
    assert {p.attributes["plan"] for p in points["capreg.discover.plans"]} == {"exact"}
    assert any(p.value >= 0 for p in points["capreg.index.capabilities"])
    assert points["capreg.changelog.position"][0].value >= 1
    assert points["capreg.changelog.lag"][0].value >= 0
    assert sum(p.count for p in points["capreg.changelog.apply_delay"]) >= 1
    assert sum(p.count for p in points["capreg.embed.batch_size"]) >= 1
    assert sum(p.count for p in points["capreg.embed.duration"]) >= 1
    reservations = {
        (p.attributes["operation"], p.attributes["result"]): p.value for p in points["capreg.budget.reservations"]
    }
    assert reservations[("reserve", "ok")] == 1 and reservations[("commit", "ok")] == 1
    assert sum(v for (op, result), v in reservations.items() if op == "reserve" and result != "ok") == 1
    assert sum(p.value for p in points["capreg.leases.removed"]) == 1
    port = observed.server.app.metrics_port
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        scraped = response.read().decode()
    for name in ("rpc_server_duration", "capreg_discover_plans", "capreg_index_capabilities",
                 "capreg_changelog_position", "capreg_changelog_lag", "capreg_embed_batch_size",
                 "capreg_budget_reservations", "capreg_leases_removed"):  # fmt: skip
        assert name in scraped, name


def test_nothing_is_recorded_when_telemetry_is_off(server: ServerThread) -> None:
    assert server.app.telemetry is None and server.app.metrics_port is None
    assert telemetry.current() is telemetry.NOOP
    with telemetry.current().span("anything") as span:
        assert not span.is_recording()


def test_json_logs_carry_the_trace_and_hide_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("capreg-test-json")
    logger.addHandler(handler)
    logger.propagate = False
    key = "capreg_0123456789abcdef_" + "s" * 43
    tracer = TracerProvider().get_tracer("test")
    try:
        with tracer.start_as_current_span("rpc") as span:
            logger.warning("key %s for postgresql://capreg:hunter2@db/capreg, Bearer %s", key, key)
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "hunter2" not in entry["message"] and "s" * 43 not in entry["message"]
    assert entry["level"] == "WARNING"
    assert redact("postgresql://u:p@h/d") == "postgresql://u:***@h/d"
    assert trace.get_current_span() is trace.INVALID_SPAN or not trace.get_current_span().is_recording()


def test_with_telemetry_off_spans_swap_no_context_and_rpcs_are_not_wrapped() -> None:
    """Off is the default; then a span is one shared object and the current span never changes, and the
    RPC interceptor hands the handler back untouched (no per-call wrapper)."""
    from opentelemetry import trace as otel_trace

    from registry.telemetry import NOOP

    assert not NOOP.tracing and not NOOP.enabled
    with NOOP.span("search", **{"capreg.k": 10}) as span:
        assert span is otel_trace.INVALID_SPAN
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
    assert NOOP.span("a") is NOOP.span("b")

    import asyncio
    from types import SimpleNamespace
    from typing import cast

    from registry.transport.telemetry_interceptor import TelemetryInterceptor

    async def answer(request: object, context: object) -> object:
        return request

    handler: grpc.RpcMethodHandler[object, object] = grpc.unary_unary_rpc_method_handler(answer)

    async def continuation(details: object) -> grpc.RpcMethodHandler[object, object]:
        return handler

    def details(metadata: tuple[tuple[str, str], ...]) -> grpc.HandlerCallDetails:
        call = SimpleNamespace(method="/capreg.v1.DiscoveryService/Discover", invocation_metadata=metadata)
        return cast(grpc.HandlerCallDetails, call)

    interceptor = TelemetryInterceptor()
    plain = asyncio.run(interceptor.intercept_service(continuation, details(())))
    assert plain is handler  # not wrapped
    traced = asyncio.run(
        interceptor.intercept_service(continuation, details((("traceparent", f"00-{'1' * 32}-{'2' * 16}-01"),)))
    )
    assert traced is not handler  # a caller's trace is carried into the logs even with telemetry off
