"""The HTTP/1.1 listener: uvicorn's httptools protocol with the deadlines and caps it lacks.

uvicorn's only connection timer is keep-alive, which any byte cancels and nothing re-arms until
a response completes, so a client that trickles its head or stalls its body holds a connection
(and, for a body, up to `max_body_bytes` of buffer) for ever. httptools has no header count or
size limit, and an unfinished header value or URL is grown by concatenation, quadratic in its
size. This protocol adds, per connection:

- a head deadline (`header_timeout_s`) from the connection opening, or from the first byte
  after the previous request: slow heads get a 408 and the connection is closed;
- a body deadline (`body_timeout_s`, plus one second per `body_min_bytes_per_s` bytes
  received, so large bodies on slow links still make it): 408, or close once the response has
  started;
- caps on header fields and on the size of the head (431), and on the wire chunks of a chunked
  body (400, the CVE-2025-23310 kind of flood);
- a cap on open connections per client address: one over it is closed at once.

The hot path stays cheap (about 1 µs per request): a few attribute updates per read and per
request, a length check per header, no per-byte work, and no timer at all for a request whose
head and body arrive in one read. A connection has at most one timer pending; when it fires it
checks the current deadline and re-arms itself, so moving from head to body to the next
request does not touch it unless the new deadline comes before it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from inferd.api.client_slots import ClientSlots
from inferd.settings import HttpSettings

log = logging.getLogger("inferd.http")

# What the parser waits for: nothing (between requests; keep-alive applies), a head, a body.
_IDLE, _HEAD, _BODY = 0, 1, 2


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the answer is in `_refusal`."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus deadlines and caps; bind it with `protocol_class`."""

    # Per server, set by `protocol_class` (class attributes: nothing to copy per connection).
    slots: ClientSlots
    ws_classes: dict[type[asyncio.Protocol], type[asyncio.Protocol]]
    _header_timeout: float
    _body_timeout: float
    _min_rate: int
    _keep_alive: float
    _max_header_count: int
    _max_header_bytes: int
    _max_chunks: int

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn's own keep-alive timer, armed when a response completes; it takes whole
        # seconds in Config, a float works as well.
        self.timeout_keep_alive = self._keep_alive  # type: ignore[assignment]
        self._host: str | None = None  # holds a slot in `slots` while set
        self._phase = _HEAD
        # When the current phase must end (a body earns time beyond it); 0.0: it started in
        # the read being parsed, and is set at the end of that read (only then is it needed).
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0  # the `_deadline` the pending timer was set for
        self._read_len = 0  # size of the read being parsed
        self._completed = False  # a request ended in the read being parsed
        self._head_raw = 0  # bytes of earlier reads that fell wholly inside the unfinished head
        self._head_uncounted = False  # the head began in a read that `_head_raw` leaves out
        self._body_bytes = 0  # bytes of reads that fell wholly inside the body
        self._chunks = 0
        self._refusal: tuple[int, str] | None = None
        ws = self.ws_protocol_class
        if ws is not None:
            counted = self.ws_classes.get(ws)
            if counted is None:
                counted = self.ws_classes[ws] = _slot_holding(ws, self.slots)
            self.ws_protocol_class = counted

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host is not None:
            if not self.slots.acquire(host):
                log.debug("closed a connection from %s: over max_connections_per_client", host)
                self._phase = _IDLE
                transport.close()
                return
            self._host = host
        self._deadline = self.loop.time() + self._header_timeout
        self._arm(self._deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._host is not None:
            self.slots.release(self._host)
            self._host = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._phase = _IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._host = None  # the WebSocket protocol (`_slot_holding`) releases the slot
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with refusals from the callbacks below told apart from
        # malformed requests, and the head and body deadlines.
        self._unset_keepalive_if_required()
        start = self._phase
        if start == _IDLE:
            # The first byte after a finished request: the next head is on the clock.
            start = self._phase = _HEAD
            self._deadline = 0.0
        self._read_len = len(data)
        self._completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        phase = self._phase
        if phase == _IDLE:
            return
        if phase == start and not self._completed:  # the whole read went to one phase
            if phase == _HEAD:
                # An unfinished header value or URL is only seen once whole (on_header,
                # on_headers_complete): count whole reads, so that a huge one is stopped early.
                self._head_raw += len(data)
                if self._head_raw > self._max_header_bytes:
                    self._refuse(431, self._head_too_large())
                    return
            else:
                # Whole reads only (a cheap lower bound): the body's progress, for its deadline.
                self._body_bytes += len(data)
        deadline = self._deadline
        if not deadline:
            timeout = self._header_timeout if phase == _HEAD else self._body_timeout
            deadline = self._deadline = self.loop.time() + timeout
        timer = self._timer
        if timer is None:
            self._arm(deadline)
        elif self._armed_for != deadline and timer.when() > deadline:
            # Set during an earlier phase, for later than this one's deadline (e.g. the body
            # of a previous request, with the time its bytes earned).
            timer.cancel()
            self._arm(deadline)

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self._phase != _HEAD:
            # Began in the read that finished the previous request: that read's bytes are not
            # all this head's, so they are not counted, and its size is checked in full.
            self._phase = _HEAD
            self._deadline = 0.0
            self._head_uncounted = True
        else:
            self._head_uncounted = False
        self._head_raw = self._body_bytes = self._chunks = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's on_header (0.55) inlined rather than called: it runs for every header of
        # every request, and a Python call costs more than its body.
        headers = self.headers
        if len(headers) >= self._max_header_count:
            self._stop(
                431,
                f"request has more than {self._max_header_count} header fields "
                "(http.max_header_count)",
            )
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 (5.5) excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The head is at most the bytes received since it began: add it up only when that bound
        # is over the cap (a large body in the same read as the head) or unknown.
        if self._head_uncounted or self._head_raw + self._read_len > self._max_header_bytes:
            size = len(self.url) + sum(len(n) + len(v) for n, v in self.headers)
            if size > self._max_header_bytes:
                self._stop(431, self._head_too_large())
        self._phase = _BODY
        self._deadline = 0.0
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._chunks += 1
        # The closing zero-size chunk has a chunk header too: max_chunks data chunks make
        # max_chunks + 1 headers.
        if self._chunks > self._max_chunks + 1:
            n = self._max_chunks
            self._stop(400, f"request body arrived in more than {n} chunks (http.max_chunks)")

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._completed = True
        super().on_message_complete()

    # Deadlines and refusals

    def _arm(self, when: float) -> None:
        self._armed_for = self._deadline
        self._timer = self.loop.call_later(max(0.0, when - self.loop.time()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        phase = self._phase
        if phase == _IDLE or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # uvicorn stopped reading (the app has not taken the body it holds yet, or a
            # pipelined request waits): the wait is the server's, so the client's clock restarts.
            timeout = self._header_timeout if phase == _HEAD else self._body_timeout
            self._deadline = now + timeout
            self._body_bytes = 0
            self._arm(self._deadline)
            return
        deadline = self._deadline
        if phase == _BODY and self._min_rate:
            deadline += self._body_bytes / self._min_rate
        if now < deadline:
            self._arm(deadline)
            return
        if phase == _HEAD:
            if self.scope is None:  # no request ever began: nothing to answer
                self._phase = _IDLE
                self.transport.close()
                return
            self._refuse(
                408,
                f"request head not received within {self._header_timeout:g} s "
                "(http.header_timeout_s)",
            )
        else:
            self._refuse(
                408,
                f"request body not received in time: {self._body_timeout:g} s plus 1 s per "
                f"{self._min_rate} bytes (http.body_timeout_s, http.body_min_bytes_per_s)",
            )

    def _head_too_large(self) -> str:
        n = self._max_header_bytes
        return f"request head is larger than {n} bytes (http.max_header_bytes)"

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a V2 error body (unless a response is already under way), then
        close; the app, if it is waiting for this request's body, sees a disconnect."""
        self._refusal = None
        self._phase = _IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        log.debug("refused a request from %s: %s %s", self._host, status, message)
        started = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        if not started and not self.transport.is_closing():
            body = orjson.dumps({"error": message})
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\nconnection: close\r\n\r\n",
                body,
            ]
            self.transport.write(b"".join(head))
        self.transport.close()


def _slot_holding(base: type[asyncio.Protocol], slots: ClientSlots) -> type[asyncio.Protocol]:
    """`base` (uvicorn's WebSocket protocol), releasing the address slot of the HTTP
    connection it took over when it closes."""

    def connection_lost(self: Any, exc: Exception | None) -> None:
        try:
            base.connection_lost(self, exc)
        finally:
            if self.client:
                slots.release(self.client[0])

    return type(f"SlotHolding{base.__name__}", (base,), {"connection_lost": connection_lost})


def protocol_class(settings: HttpSettings) -> type[LimitedHttpProtocol]:
    """A protocol class for one server (uvicorn's `Config(http=...)`), with its own table of
    connections per client address."""
    bound = {
        "slots": ClientSlots(settings.max_connections_per_client),
        "ws_classes": {},
        "_header_timeout": settings.header_timeout_s,
        "_body_timeout": settings.body_timeout_s,
        "_min_rate": settings.body_min_bytes_per_s,
        "_keep_alive": settings.keep_alive_timeout_s,
        "_max_header_count": settings.max_header_count,
        "_max_header_bytes": settings.max_header_bytes,
        "_max_chunks": settings.max_chunks,
    }
    return type("InferdHttpProtocol", (LimitedHttpProtocol,), bound)
