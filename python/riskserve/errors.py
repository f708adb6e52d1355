"""One exception base with a transport-neutral code. Only the transport layer
turns codes into gRPC status codes."""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Transport-neutral error codes (the gRPC status of each: transport/errors.py)."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    FAILED_PRECONDITION = "failed_precondition"
    INTERNAL = "internal"


class RiskserveError(Exception):
    """Base of every error riskserve raises on purpose."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RiskserveError):
    code = Code.INVALID_ARGUMENT


class NotFound(RiskserveError):
    code = Code.NOT_FOUND


class Unavailable(RiskserveError):
    code = Code.UNAVAILABLE


class Overloaded(RiskserveError):
    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(RiskserveError):
    code = Code.DEADLINE_EXCEEDED


class IntegrityError(RiskserveError):
    """A model version on disk fails verification (hash, manifest, spec)."""

    code = Code.FAILED_PRECONDITION


class Conflict(RiskserveError):
    """The request is valid but the deployment's state does not allow it."""

    code = Code.FAILED_PRECONDITION
