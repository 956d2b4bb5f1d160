"""The one place where domain errors become gRPC status codes, with google.rpc details."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from registry.domain.errors import DomainError, ErrorCode, InvalidArgument

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


@dataclass(frozen=True, slots=True)
class _Undecodable:
    reason: str


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Also caps how long any call may run (`max_call_s`), whatever deadline the caller sent."""

    def __init__(self, max_call_s: float = 60.0):
        self._max_call_s = max_call_s

    """Maps DomainError to its status; any other exception to INTERNAL with an id to find it in the log."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method
        deserialize = handler.request_deserializer

        def tolerant_deserializer(data: bytes) -> Any:
            # gRPC answers UNKNOWN when a deserializer raises; undecodable bytes are the caller's error.
            try:
                return deserialize(data) if deserialize is not None else data
            except DecodeError as exc:
                return _Undecodable(str(exc))

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Undecodable):
                error = InvalidArgument(
                    "request", f"the message does not decode as {method}'s request: {request.reason}"
                )
                status = rpc_status.to_status(status_for(error))
                await context.abort(status.code, status.details, status.trailing_metadata)
            remaining = context.time_remaining()
            budget = self._max_call_s if remaining is None else min(remaining, self._max_call_s)
            try:
                async with asyncio.timeout(budget):
                    return await inner(request, context)  # type: ignore[arg-type]  # stubs predate aio
            except grpc.aio.AbortError:
                raise
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the call ran past its deadline (at most {self._max_call_s:g} s on this server)",
                )
            except DomainError as error:
                status = rpc_status.to_status(status_for(error))
                await context.abort(status.code, status.details, status.trailing_metadata)
            except Exception:
                incident = uuid.uuid4().hex[:12]
                log.exception("internal error in %s (incident %s)", method, incident)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error; incident {incident} is in the server log"
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=tolerant_deserializer,
            response_serializer=handler.response_serializer,
        )
