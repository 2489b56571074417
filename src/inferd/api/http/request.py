"""One data-plane HTTP request as the router sees it: the headers it reads once, the caller,
and a watcher that cancels the handler when the client goes away."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Scope

from inferd.auth.principal import ANONYMOUS, Principal
from inferd.core.errors import InvalidInput

#: The ASGI scope key where a route that writes its own answer leaves the status for the access
#: log (499 when the client left first); the raw router reads it.
ACCESS_STATUS = "inferd.status"
#: Per-request time limit in milliseconds (V2's `timeout` parameter, in µs, works too).
TIMEOUT_HEADER = b"x-request-timeout-ms"


def _timeout(raw: bytes) -> float:
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not 0 < ms < 1e10:
        raise InvalidInput("X-Request-Timeout-Ms must be a positive number of milliseconds")
    return ms / 1000


async def until_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    """Cancel `task` (a request's handler or stream) if its client goes away first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


class Request:
    """What a route needs from one HTTP request (headers read once)."""

    __slots__ = (
        "accept_encoding", "api_key", "authorization", "content_encoding", "content_length",
        "header_length", "headers", "method", "model", "principal", "receive", "request_id",
        "route", "timeout_s", "version", "watcher",
    )  # fmt: skip

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.watcher: asyncio.Task[None] | None = None
        self.receive = receive
        self.content_length: int | None = None
        self.content_encoding: str | None = None
        self.accept_encoding: str | None = None
        self.header_length: str | None = None
        self.request_id: str | None = None
        self.model: str | None = None
        self.version: str | None = None
        self.route = "other"
        self.timeout_s: float | None = None
        self.authorization: str | None = None
        self.api_key: str | None = None
        self.principal: Principal = ANONYMOUS
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        for k, v in self.headers:
            if k == b"content-length":
                try:
                    self.content_length = int(v)
                except ValueError:
                    raise InvalidInput("Content-Length is not an integer") from None
            elif k == b"content-encoding":
                self.content_encoding = v.decode("latin-1")
            elif k == b"inference-header-content-length":
                self.header_length = v.decode("latin-1")
            elif k == b"accept-encoding":
                self.accept_encoding = v.decode("latin-1")
            elif k == b"x-request-id":
                self.request_id = v.decode("latin-1")[:128]
            elif k == TIMEOUT_HEADER:
                self.timeout_s = _timeout(v)
            elif k == b"authorization":
                self.authorization = v.decode("latin-1")
            elif k == b"x-api-key":
                self.api_key = v.decode("latin-1")

    def header(self, name: str) -> str | None:
        """The value of header `name` (lower case), None when absent (routing rules read it)."""
        key = name.encode("latin-1")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None

    def watch_disconnect(self) -> None:
        """Start cancelling the current task if the client disconnects (idempotent)."""
        task = asyncio.current_task()
        if self.watcher is None and task is not None:
            self.watcher = asyncio.create_task(until_disconnect(self.receive, task))
