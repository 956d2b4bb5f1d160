"""Builds the app's OpenTelemetry providers from its settings: a trace exporter (console or OTLP), a
Prometheus scrape endpoint and an OTLP metric push. Tests pass their own in-memory exporter and reader."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter

from registry.config import Settings
from registry.telemetry import TRACER_NAME, Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TelemetryExporters:
    """Sinks a caller brings (tests: in-memory ones), in addition to those the settings configure."""

    spans: SpanExporter | None = None
    metrics: MetricReader | None = None


def build_telemetry(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> tuple[Telemetry, int | None] | None:
    """The app's telemetry and the port its metrics endpoint listens on (None without one); None when
    nothing is configured, so the no-op telemetry stays in place."""
    exporter = span_exporter or _span_exporter(settings)
    readers: list[MetricReader] = [metric_reader] if metric_reader is not None else []
    stops: list[Callable[[], None]] = []
    metrics_port = None
    if settings.metrics_port is not None:
        reader, metrics_port, stop = _prometheus(settings)
        readers.append(reader)
        stops.append(stop)
    if settings.otel_exporter == "otlp":
        interval_ms = settings.metrics_interval_s * 1000
        readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter(settings), interval_ms))
    if exporter is None and not readers:
        return None
    resource = Resource.create(
        {"service.name": settings.otel_service_name, "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"}
    )
    tracer_provider = TracerProvider(resource=resource)
    if exporter is not None:
        # In-process exporters (console, tests) export as each span ends; a network exporter batches.
        batch = settings.otel_exporter == "otlp" and span_exporter is None
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        for stop in stops:
            stop()

    # Without a span exporter, spans would be built for nothing: the no-op tracer still carries the caller's
    # trace context (for the logs), and child spans cost nothing.
    tracer = tracer_provider.get_tracer(TRACER_NAME) if exporter is not None else trace.NoOpTracer()
    telemetry = Telemetry(tracer, meter_provider.get_meter(TRACER_NAME), shutdown=shutdown)
    return telemetry, metrics_port


def _span_exporter(settings: Settings) -> SpanExporter | None:
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter(service_name=settings.otel_service_name)
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.otel_endpoint or None)
    return None


def _otlp_metric_exporter(settings: Settings) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=settings.otel_endpoint or None)


def _prometheus(settings: Settings) -> tuple[MetricReader, int, Callable[[], None]]:
    """A reader on a registry of this app's own, served at http://metrics_host:port/metrics."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    server, thread = start_http_server(settings.metrics_port or 0, addr=settings.metrics_host, registry=registry)
    port = int(server.server_port)
    log.info("metrics for Prometheus at http://%s:%d/metrics", settings.metrics_host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return reader, port, stop
