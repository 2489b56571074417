"""The one exception the SDK raises for a refused or failed call."""

from __future__ import annotations

import email.utils
import time

import httpx


class InferdClientError(Exception):
    """A call the server refused (any non-2xx answer), or one that got no answer at all.

    `status` is the HTTP status code, or 0 when there was no HTTP answer to report (the server
    could not be reached, or a wait gave up). `message` is the server's `error` text.
    `retry_after` is the server's Retry-After in seconds (429 and 503 carry one), else None.
    """

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"InferdClientError(status={self.status}, message={self.message!r})"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds)


def error_from_response(response: httpx.Response) -> InferdClientError:
    """The exception for a non-2xx answer, carrying the server's own message."""
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        # the OpenAI-compatible routes nest it: {"error": {"message": ...}}
        if isinstance(err, dict):
            err = err.get("message")
        if err is not None:
            message = str(err)
    if not message:
        text = response.text.strip()
        message = text[:500] if text else f"HTTP {response.status_code} {response.reason_phrase}"
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return InferdClientError(response.status_code, message, retry_after)
