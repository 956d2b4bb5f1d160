"""Errors raised by the clients, carrying the gRPC status code, the field at fault and a retry hint."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class CapregError(Exception):
    """A failed call. `field` names the request field at fault for INVALID_ARGUMENT."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class InvalidArgumentError(CapregError):
    pass


class NotFoundError(CapregError):
    pass


class ConflictError(CapregError):
    """ABORTED: the agent changed since you read it (generation mismatch); re-read and retry."""


class UnavailableError(CapregError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[CapregError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> CapregError:
    """Translate a grpc error (sync or aio) into the matching CapregError."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    field: str | None = None
    retry_after: float | None = None
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.ToMilliseconds() / 1000.0
    return _BY_CODE.get(code, CapregError)(code, message, field, retry_after)
