"""Domain errors with abstract codes; exactly one transport interceptor maps them to gRPC status."""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    CONFLICT = "conflict"  # optimistic-concurrency mismatch; retry after re-reading
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"


class DomainError(Exception):
    """Base of every error a caller is meant to see."""

    code: ErrorCode = ErrorCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class InvalidArgument(DomainError):
    """The request is malformed; `field` names the offending field path."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", field=field)


class NotFound(DomainError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = ErrorCode.ALREADY_EXISTS


class Conflict(DomainError):
    code = ErrorCode.CONFLICT


class FailedPrecondition(DomainError):
    code = ErrorCode.FAILED_PRECONDITION


class Unavailable(DomainError):
    """Something the call needs (the database) is unreachable for now; retry after `retry_after_s`."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float = 1.0):
        super().__init__(message, retry_after_s=retry_after_s)


class ResourceExhausted(DomainError):
    """A per-process limit is reached (e.g. open watches); retry after `retry_after_s` or elsewhere."""

    code = ErrorCode.RESOURCE_EXHAUSTED
