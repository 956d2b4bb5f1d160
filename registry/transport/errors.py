"""The one place where domain errors become gRPC status codes, with google.rpc details."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from registry.domain.errors import DomainError, ErrorCode, InvalidArgument
from registry.service.calls import call_deadline
from registry.store.outages import database_unavailable

log = logging.getLogger(__name__)

ERROR_DOMAIN = "capreg.dev"
CODE_MAP: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    ErrorCode.CONFLICT: code_pb2.ABORTED,
    ErrorCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    ErrorCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(error: DomainError) -> status_pb2.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.code.name, domain=ERROR_DOMAIN))]
    if error.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=CODE_MAP[error.code], message=error.message, details=details)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class _Undecodable:
    reason: str


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps DomainError to its status, a lost or unreachable database to UNAVAILABLE with a retry hint, and
    any other exception to INTERNAL with an id to find it in the log. Also caps how long a unary call may
    run (`max_call_s`), whatever deadline the caller sent; streams run until either side closes them."""

    def __init__(self, max_call_s: float = 60.0):
        self._max_call_s = max_call_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        deserialize = handler.request_deserializer

        def tolerant_deserializer(data: bytes) -> Any:
            # gRPC answers UNKNOWN when a deserializer raises; undecodable bytes are the caller's error.
            try:
                return deserialize(data) if deserialize is not None else data
            except DecodeError as exc:
                return _Undecodable(str(exc))

        def checked(request: Any) -> Any:
            if isinstance(request, _Undecodable):
                raise InvalidArgument("request", f"the message does not decode as {method}'s request: {request.reason}")
            return request

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                remaining = context.time_remaining()
                budget = self._max_call_s if remaining is None else min(remaining, self._max_call_s)
                call_deadline.set(time.monotonic() + budget)
                try:
                    async with asyncio.timeout(budget):
                        return await inner(checked(request), context)  # type: ignore[arg-type]  # stubs predate aio
                except TimeoutError:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the call ran past its deadline (at most {self._max_call_s:g} s on this server)",
                    )
                except Exception as exc:
                    await _abort(exc, context, method)

            return grpc.unary_unary_rpc_method_handler(
                guarded, request_deserializer=tolerant_deserializer, response_serializer=handler.response_serializer
            )

        async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                yield checked(request)

        if handler.unary_stream is not None or handler.stream_stream is not None:
            streaming: Any = handler.unary_stream or handler.stream_stream
            client_streams = handler.stream_stream is not None

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    source = checked_stream(request) if client_streams else checked(request)
                    if inspect.iscoroutinefunction(streaming):  # writes with context.write (grpc health Watch)
                        await streaming(source, context)
                        return
                    async for response in streaming(source, context):
                        yield response
                except Exception as exc:
                    await _abort(exc, context, method)

            kind = grpc.stream_stream_rpc_method_handler if client_streams else grpc.unary_stream_rpc_method_handler
            return kind(
                guarded_stream,
                request_deserializer=tolerant_deserializer,
                response_serializer=handler.response_serializer,
            )
        gathering: Any = handler.stream_unary

        async def guarded_gather(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await gathering(checked_stream(requests), context)
            except Exception as exc:
                await _abort(exc, context, method)

        return grpc.stream_unary_rpc_method_handler(
            guarded_gather, request_deserializer=tolerant_deserializer, response_serializer=handler.response_serializer
        )


async def _abort(exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    """End the call with the status this exception deserves."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, DomainError):
        status = rpc_status.to_status(status_for(exc))
        await context.abort(status.code, status.details, status.trailing_metadata)
    unavailable = database_unavailable(exc)
    if unavailable is not None:
        log.warning("%s answered UNAVAILABLE: %s", method, _first_line(exc))
        status = rpc_status.to_status(status_for(unavailable))
        await context.abort(status.code, status.details, status.trailing_metadata)
    incident = uuid.uuid4().hex[:12]
    log.error("internal error in %s (incident %s)", method, incident, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the server log")
