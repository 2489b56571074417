"""The connection-level half of the native gRPC transport, apart from frame parsing (`http2.py`):
the socket, back-pressure from a client that does not read, the timeouts, the drain, the
peer's address.

One timer per connection, re-armed every `Limits.tick_s()`, checks the read deadline of an
incomplete frame or header block, the idle timeout and keepalive. The read path only sets a
flag and, when a read ends inside a frame, notes the time: no timer per frame or per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from inferd.api.grpc.frames import GOAWAY, GOAWAY_BODY, KEEPALIVE_PING, NO_ERROR, frame
from inferd.api.grpc.limits import Budget, Limits

if TYPE_CHECKING:
    from inferd.api.grpc.stream import Call, Stream

log = logging.getLogger("inferd.grpc")


class Dispatcher(Protocol):
    """Reads a request's header fields (`head`, kept with a header block that is seen again)
    and opens a call for each new stream (or answers the stream at once and returns None)."""

    def head(self, headers: list[tuple[str, str]]) -> Any: ...
    def open(self, stream: Stream, head: Any) -> Call | None: ...


class BaseConnection(asyncio.Protocol):
    """One client connection; `on_close` is told when it is gone.

    `budget` counts the request bytes buffered by every connection of the server (its own when
    None); `clock` (seconds, monotonic) is what the timeouts are measured with. A subclass
    parses the bytes (`data_received`) and says when a frame or header block began to arrive
    and is still incomplete (`_incomplete_since`), how to send a keepalive PING (`_ping`) and
    how the socket's loss reaches its streams (`_lost`).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits,
        on_close: Callable[[BaseConnection], None] | None = None,
        budget: Budget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.max_message = limits.max_message_bytes
        self.budget = budget if budget is not None else Budget(limits.max_buffered_bytes_total)
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.buffered = 0  # request bytes held by this connection's streams (Stream.hold)
        self.max_buffered = limits.max_buffered_bytes_per_connection
        self.draining = False  # GOAWAY sent or received: no new streams
        self.closed = False
        #: Resolved once no stream is open; exists only while someone waits (`wait_idle`).
        self._idle_waiter: asyncio.Future[None] | None = None
        # timeouts: timestamps from `clock`, flags set by the read path and read by `tick`
        self._clock = clock
        self._tick = limits.tick_s()
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False  # reading paused because the client does not read
        self._read = False  # bytes arrived since the last tick
        self._opened = False  # a stream opened since the last tick
        self._active_at = 0.0  # the last tick that saw bytes arrive or leave
        self._busy_at = 0.0  # the last tick that saw a stream open
        self._ping_at = 0.0  # our keepalive PING was sent at; 0: none outstanding
        self._write_size = 0

    # ---- what a subclass provides ----------------------------------------------------------

    def _incomplete_since(self, now: float) -> float:
        """When the oldest frame or header block still incomplete began to arrive (0: none)."""
        raise NotImplementedError

    def _reading_resumed(self, now: float) -> None:
        """Reading resumes at `now`: what was not read while paused is not the client's delay."""

    def _ping(self, payload: bytes) -> None:
        raise NotImplementedError

    def _lost(self) -> None:
        """The socket is gone: drop what the parser holds."""

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def _started(self, transport: asyncio.BaseTransport) -> None:
        """Take the socket and start the timer (the preface is due from now)."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self._active_at = self._busy_at = self._clock()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.free()
            if stream.call is not None:
                stream.call.reset()
        self.blocked.clear()
        self._lost()
        self._now_idle()
        if self.on_close is not None:
            self.on_close(self)

    def eof_received(self) -> bool:
        return False

    # A client that does not read what it is sent (PING or SETTINGS floods, large answers) is not
    # read from either until it catches up, so the output buffer stays bounded.
    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self._write_size = self.transport.get_write_buffer_size()
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self._reading_resumed(self._clock())
            self.transport.resume_reading()

    # ---- timeouts --------------------------------------------------------------------------

    def _arm(self) -> None:
        if not self._tick or self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by hand outside a loop (tests): `tick` is called directly
            return
        self._timer = loop.call_later(self._tick, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:  # closed by us a tick ago and not gone yet: the client does not read
            if self.transport is not None:
                self.transport.abort()
            return
        self.tick()
        self._arm()

    def tick(self) -> None:
        """Check the timeouts (every `Limits.tick_s()`; each fires at most one tick late)."""
        if self.closed:
            return
        limits, now = self.limits, self._clock()
        transport = self.transport
        active = self._read
        self._read = False
        if self._paused and transport is not None:  # not read from: is it reading our answers?
            size = transport.get_write_buffer_size()
            active = active or size < self._write_size
            self._write_size = size
        if active:
            self._active_at = now
            self._ping_at = 0.0  # alive, whether or not the PING's ACK came yet
        if self.streams or self._opened:
            self._opened = False
            self._busy_at = now
        read = limits.read_timeout_s
        if read and not self._paused:
            started = self._incomplete_since(now)
            if started and now - started > read:
                self._expire("read timeout: a frame or header block left incomplete")
                return
        if limits.idle_timeout_s and now - self._busy_at >= limits.idle_timeout_s:
            self._expire("idle timeout: no call for a while")
            return
        if limits.keepalive_interval_s:
            if self._ping_at:
                if now - self._ping_at > limits.keepalive_timeout_s:
                    self._expire("keepalive timeout: PING not answered")
            elif now - self._active_at >= limits.keepalive_interval_s:
                self._ping_at = now
                self._ping(KEEPALIVE_PING)

    def _pong(self, payload: bytes) -> None:
        """A PING ACK came back."""
        if payload == KEEPALIVE_PING:
            self._ping_at = 0.0

    def _expire(self, reason: str) -> None:
        """Close now for a timeout: GOAWAY (sent if the socket takes it), then drop the socket
        without waiting for a client that may never read."""
        log.debug("gRPC connection closed: %s", reason)
        self.goaway(NO_ERROR, reason)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # ---- helpers ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def wait_idle(self) -> None:
        """Return once no stream is open on this connection."""
        if not self.streams:
            return
        if self._idle_waiter is None:
            self._idle_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._idle_waiter)

    def _now_idle(self) -> None:
        waiter, self._idle_waiter = self._idle_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_idle(self) -> None:
        if not self.streams:
            if self._idle_waiter is not None:
                self._now_idle()
            if self.draining and self.transport is not None:
                self.transport.close()

    def goaway(self, code: int = NO_ERROR, message: str = "") -> None:
        """Tell the client no new streams will be taken; close once the open ones are done."""
        if self.closed or (self.draining and code == NO_ERROR):
            return
        self.draining = True
        self.write(
            frame(
                GOAWAY, 0, 0, GOAWAY_BODY.pack(self.last_stream_id, code) + message.encode()[:256]
            )
        )
        self._check_idle()

    def abort(self, code: int, message: str) -> None:
        """A connection error: GOAWAY with the reason, close."""
        log.debug("gRPC connection error %d: %s", code, message)
        self.goaway(code, message)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def peer(self) -> str:
        if self.transport is None:
            return ""
        addr: Any = self.transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = addr[0]
            return f"ipv6:[{host}]:{addr[1]}" if ":" in host else f"ipv4:{host}:{addr[1]}"
        return str(addr or "")
