"""A server span and a latency measurement per RPC, with the caller's trace context (W3C traceparent in the
call's metadata) as its parent. Outermost, so it sees the status the error interceptor settled on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from registry.telemetry import current

Context = grpc.aio.ServicerContext[Any, Any]


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        carrier = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        if not current().enabled and "traceparent" not in carrier:
            return handler  # nothing to record, no caller trace for the logs to carry: no wrapper at all
        method = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def traced(request: Any, context: Context) -> Any:
                with _Call(method, carrier, attributes, context):
                    return await unary(request, context)  # type: ignore[arg-type]  # stubs predate aio

            return grpc.unary_unary_rpc_method_handler(
                traced,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None or handler.stream_stream is not None:
            streaming: Any = handler.unary_stream or handler.stream_stream

            async def traced_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                # No context attached across yields: a stream cancelled mid-write is finalised in another
                # context, where a detach would fail. Its span still records the call and its status.
                with _Call(method, carrier, attributes, context, attach=False):
                    async for response in streaming(request, context):
                        yield response

            kind = (
                grpc.stream_stream_rpc_method_handler
                if handler.stream_stream is not None
                else grpc.unary_stream_rpc_method_handler
            )
            return kind(
                traced_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming to one answer: none is served


class _Call:
    """The span and the measurement of one call."""

    def __init__(
        self, method: str, carrier: dict[str, str], attributes: dict[str, str], context: Context, attach: bool = True
    ):
        self._attach = attach
        self._method = method
        self._carrier = carrier
        self._attributes = attributes
        self._context = context
        self._token: object = None
        self._span: trace.Span = trace.INVALID_SPAN
        self._started = 0.0

    def __enter__(self) -> _Call:
        telemetry = current()
        parent = propagate.extract(self._carrier)
        self._span = telemetry.tracer.start_span(
            self._method, context=parent, kind=SpanKind.SERVER, attributes=self._attributes
        )
        if self._attach:
            self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        code = _status(self._context, exc)
        elapsed_ms = (time.perf_counter() - self._started) * 1000.0
        current().rpc_duration.record(elapsed_ms, {"rpc.method": self._method, "rpc.grpc.status_code": code.name})
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            self._span.set_status(Status(StatusCode.ERROR, code.name))
        self._span.end()
        if self._attach:
            otel_context.detach(self._token)  # type: ignore[arg-type]


def _status(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    """The call's status: what the handler aborted with, UNKNOWN for an escaped error, else OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, GeneratorExit):  # the stream was closed before it ended: the caller went away
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError":
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
