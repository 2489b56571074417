"""The one table mapping inferd errors to gRPC status codes."""

from __future__ import annotations

import grpc

from inferd.core import errors as e


class GrpcStatus(e.InferdError):
    """An error with an explicit gRPC code (e.g. UNIMPLEMENTED RPCs, NOT_FOUND on load)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


#: First match wins, so subclasses come before their bases.
STATUS: list[tuple[type[e.InferdError], grpc.StatusCode]] = [
    (e.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (e.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (e.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (e.ServerNotReady, grpc.StatusCode.UNAVAILABLE),
    (e.Overloaded, grpc.StatusCode.UNAVAILABLE),
    (e.ReplicaFailed, grpc.StatusCode.UNAVAILABLE),
    (e.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.Cancelled, grpc.StatusCode.CANCELLED),
    (e.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.UnsupportedMediaType, grpc.StatusCode.INVALID_ARGUMENT),
    (e.ModelExecutionError, grpc.StatusCode.INTERNAL),
    (e.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (e.ModelLoadError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (e.Unprocessable, grpc.StatusCode.INVALID_ARGUMENT),
    (e.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
]

#: What a client sees for anything that is not an InferdError (details go to the log only).
INTERNAL_MESSAGE = "internal server error"


def code_of(exc: e.InferdError) -> grpc.StatusCode:
    """The gRPC status code of an inferd error (INTERNAL when it is in no row)."""
    if isinstance(exc, GrpcStatus):
        return exc.code
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
