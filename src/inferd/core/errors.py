"""The one exception hierarchy. Adapters map these to status codes in one table each."""

from __future__ import annotations


class InferdError(Exception):
    """Base of every error inferd raises on purpose; `message` is safe to show to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferdError):
    """The request is malformed or does not match the model (HTTP 400)."""


class InvalidField(InvalidInput):
    """A bad request field (HTTP 400); `param` names it (OpenAI's error `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class ModelNotFound(InferdError):
    """No such model or version (HTTP 404). The message starts with 'Request for unknown model'."""

    def __init__(self, name: str, version: str | None = None) -> None:
        what = f"'{name}'" if version is None else f"'{name}' version {version}"
        super().__init__(f"Request for unknown model: {what} is not found")
        self.name = name
        self.version = version


class ModelNotReady(InferdError):
    """The model exists but cannot serve now: loading, failed or unloaded (HTTP 503)."""


class ServerNotReady(InferdError):
    """The server is starting or shutting down (HTTP 503)."""


class PayloadTooLarge(InferdError):
    """The body, or its decompressed form, is over the configured cap (HTTP 413)."""


class UnsupportedMediaType(InferdError):
    """An unknown Content-Encoding or content type (HTTP 415)."""


class ModelExecutionError(InferdError):
    """The model raised while running (HTTP 500); the message is the model's."""


class ModelLoadError(InferdError):
    """A model could not be loaded; the reason is kept and reported (never hidden)."""


class UntrustedArtifact(ModelLoadError):
    """A code-executing artifact format (pickle) without `trusted: true`."""


class Unsupported(InferdError):
    """A feature the model or runtime does not offer (HTTP 501)."""


class Overloaded(InferdError):
    """The model's queue is full: refused at once (HTTP 503 + Retry-After, gRPC UNAVAILABLE)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferdError):
    """The request's timeout passed before it finished (HTTP 504, gRPC DEADLINE_EXCEEDED)."""


class ReplicaFailed(InferdError):
    """The replica running the request died or hung; it is being replaced (HTTP 503)."""


class Cancelled(InferdError):
    """The client went away; the request was dropped (HTTP 499 in logs, gRPC CANCELLED)."""


# ---- control plane ---------------------------------------------------------------------------


class Unauthenticated(InferdError):
    """No credentials, or credentials that do not verify (HTTP 401, gRPC UNAUTHENTICATED)."""


class PermissionDenied(InferdError):
    """Known caller, but not allowed to do this (HTTP 403, gRPC PERMISSION_DENIED).

    Never used for someone else's private object: that is `NotFound`, so nothing leaks.
    """


class NotFound(InferdError):
    """No such object, or one the caller may not see (HTTP 404)."""


class Conflict(InferdError):
    """The object exists already or is in a state that forbids the change (HTTP 409)."""


class Unprocessable(InferdError):
    """Well-formed but unusable content, e.g. an artifact of an unknown format (HTTP 422)."""


class UnsafeArtifact(Unprocessable):
    """A code-executing format (pickle) from an owner an admin has not marked trusted (422)."""


class RateLimited(InferdError):
    """A rate, concurrency or storage quota is used up (HTTP 429 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(InferdError):
    """A dependency (database, Redis, object store) is down; try again (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
