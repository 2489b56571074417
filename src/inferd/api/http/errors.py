"""The one table mapping inferd errors to HTTP status codes (V2/V1 `{"error": msg}` dialect)."""

from __future__ import annotations

from inferd.core import errors as e


class MethodNotAllowed(e.InferdError):
    """A known route called with the wrong HTTP method (405)."""


STATUS: list[tuple[type[e.InferdError], int]] = [
    (MethodNotAllowed, 405),
    (e.ModelNotFound, 404),
    (e.InvalidInput, 400),
    (e.ModelNotReady, 503),
    (e.Overloaded, 503),
    (e.ReplicaFailed, 503),
    (e.DeadlineExceeded, 504),
    (e.Cancelled, 499),
    (e.ServerNotReady, 503),
    (e.PayloadTooLarge, 413),
    (e.UnsupportedMediaType, 415),
    (e.ModelExecutionError, 500),
    (e.Unsupported, 501),
    (e.ModelLoadError, 400),
    (e.Unauthenticated, 401),
    (e.PermissionDenied, 403),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.Unprocessable, 422),
    (e.RateLimited, 429),
    (e.Unavailable, 503),
]


def status_of(exc: e.InferdError) -> int:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500
