"""HTTP/2 server connections for gRPC, on the event loop (RFC 9113 + "gRPC over HTTP2").

One `Connection` per TCP connection: it parses frames, decodes header blocks (HPACK, with the
`hpack` library), runs flow control both ways and splits DATA into length-prefixed gRPC messages.
What a stream carries is handed to the `Dispatcher` (`inferd.api.grpc.calls`), which answers
through the stream's `send_*` / `finish` methods. Everything runs on the loop thread: no thread
hops per call, unlike grpcio's completion-queue poller, which is where grpc.aio's time went.

Response headers are encoded without the dynamic table (static indexes and literals), so they
are constant bytes and the peer's table size never matters.

Bounds (`Limits`): request bytes buffered per connection and per server (`Stream.hold`); the
timeouts, back-pressure and drain are `connection.BaseConnection`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import grpc
import hpack

from inferd.api.grpc.connection import BaseConnection, Dispatcher
from inferd.api.grpc.errors import INTERNAL_MESSAGE
from inferd.api.grpc.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_BLOCK,
    MAX_HEADER_LIST_SIZE,
    MAX_NET_RESETS,
    MAX_WINDOW,
    NO_ERROR,
    OUR_CONN_WINDOW,
    OUR_MAX_FRAME,
    OUR_MAX_HEADER_LIST,
    OUR_MAX_STREAMS,
    OUR_STREAM_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RECENT_RESETS,
    REFUSED_STREAM,
    RST_STREAM,
    SETTING,
    SETTINGS,
    STREAM_BACKLOG,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    ConnectionFault,
    StreamError,
    frame,
    unpad,
)
from inferd.api.grpc.headers import inspect_fields, keeps_table
from inferd.api.grpc.limits import Budget, Limits
from inferd.api.grpc.stream import Stream

log = logging.getLogger("inferd.grpc")


class Block(NamedTuple):
    """A decoded header block: its fields, why they are malformed (None when they are not),
    their size as MAX_HEADER_LIST_SIZE counts it, and the dispatcher's reading of them."""

    fields: list[tuple[str, str]]
    malformed: str | None
    size: int
    head: Any


class Connection(BaseConnection):
    """One client connection, its HTTP/2 parsed here (see `BaseConnection` for the rest)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits,
        on_close: Callable[[BaseConnection], None] | None = None,
        budget: Budget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(dispatcher, limits, on_close, budget, clock)
        self.peer_window = 65_535
        self.peer_max_frame = 16_384
        self.send_window = 65_535
        self.recv_window = OUR_CONN_WINDOW
        self.unacked = 0
        self._preface = False
        self._buf = bytearray()
        self._need = len(PREFACE)
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_BLOCK
        self._blocks: dict[bytes, Block] = {}
        self._continuation: tuple[int, int, bytearray] | None = None
        self._credit: dict[int, Stream] = {}
        self._resets = 0
        self._reset_ids: dict[int, None] = {}  # streams we reset lately, oldest first
        self._partial_since = 0.0  # a frame (or the preface) began arriving at; 0: none
        self._block_since = 0.0  # a header block awaiting CONTINUATION began at

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._started(transport)
        settings = b"".join(
            SETTING.pack(k, v)
            for k, v in (
                (MAX_CONCURRENT_STREAMS, OUR_MAX_STREAMS),
                (INITIAL_WINDOW_SIZE, OUR_STREAM_WINDOW),
                (MAX_FRAME_SIZE, OUR_MAX_FRAME),
                (MAX_HEADER_LIST_SIZE, OUR_MAX_HEADER_LIST),
            )
        )
        self.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(OUR_CONN_WINDOW - 65_535))
        )
        self._partial_since = self._active_at  # the preface is due

    def data_received(self, data: bytes) -> None:
        self._read = True
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            if not self._partial_since:
                self._partial_since = self._clock()
            return
        try:
            if not self._preface:
                if buf[: len(PREFACE)] != PREFACE:
                    raise ConnectionFault(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[: len(PREFACE)]
                self._preface = True
                self._partial_since = 0.0
            done = self._frames(buf)
            self._send_credit()
        except ConnectionFault as e:
            self.abort(e.code, str(e))
            return
        if not buf:
            self._partial_since = 0.0
        elif done or not self._partial_since:  # the deadline runs from a frame's first read
            self._partial_since = self._clock()

    def _frames(self, buf: bytearray) -> bool:
        """Handle the complete frames in `buf` (and drop them); whether there was one."""
        pos, n = 0, len(buf)
        try:
            with memoryview(buf) as view:
                while n - pos >= 9:
                    hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(view, pos)
                    length = (hi << 8) | lo
                    if length > OUR_MAX_FRAME:
                        raise ConnectionFault(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                    end = pos + 9 + length
                    if end > n:
                        self._need = end - pos
                        return pos > 0
                    payload = bytes(view[pos + 9 : end])
                    pos = end
                    self._frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                    if self.closed:
                        return True
                self._need = 9
            return pos > 0
        finally:
            del buf[:pos]

    def _lost(self) -> None:
        self._credit.clear()
        self._buf = bytearray()  # rebound, not cleared: a frame may still be viewed
        self._continuation = None
        self._blocks.clear()

    def _reading_resumed(self, now: float) -> None:
        if self._partial_since:
            self._partial_since = now
        if self._continuation is not None:
            self._block_since = now

    def _incomplete_since(self, now: float) -> float:
        started = self._partial_since
        if self._continuation is not None:
            started = min(started or now, self._block_since)
        return started

    def _ping(self, payload: bytes) -> None:
        self.write(frame(PING, 0, 0, payload))

    # ---- frames ----------------------------------------------------------------------------

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._continuation is not None and ftype != CONTINUATION:
            raise ConnectionFault(PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            self._on_headers(flags, sid, payload)
        elif ftype == CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == PING:
            if len(payload) != 8:
                raise ConnectionFault(FRAME_SIZE_ERROR, f"PING of {len(payload)} bytes")
            if sid:
                raise ConnectionFault(PROTOCOL_ERROR, "PING on a stream")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
            else:
                self._pong(payload)
        elif ftype == RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif ftype == GOAWAY:
            if sid:
                raise ConnectionFault(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ConnectionFault(FRAME_SIZE_ERROR, "GOAWAY too short")
            self.draining = True
            self._check_idle()
        elif ftype == PUSH_PROMISE:
            raise ConnectionFault(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == PRIORITY and not sid:
            raise ConnectionFault(PROTOCOL_ERROR, "PRIORITY on stream 0")
        # PRIORITY and unknown frame types are ignored

    def _idle_stream(self, sid: int) -> bool:
        """Whether `sid` was never opened (clients open odd ids only, in increasing order)."""
        return sid % 2 == 0 or sid > self.last_stream_id

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionFault(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise ConnectionFault(FLOW_CONTROL_ERROR, "connection window exceeded")
        self.unacked += size
        if flags & PADDED:
            payload = unpad(payload)
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle_stream(sid):
                raise ConnectionFault(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream already answered or reset: ignored
        if stream.remote_closed:  # the client ended it already (RFC 9113 §5.1)
            self._reset(stream, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        stream.unacked += size
        try:
            if payload:
                stream.receive(payload)
            if flags & END_STREAM:
                self._remote_end(stream)
            elif stream.unacked:
                self._credit[sid] = stream
        except StreamError as e:
            self._fail(stream, e)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionFault(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if len(payload) > MAX_HEADER_BLOCK:
            raise ConnectionFault(PROTOCOL_ERROR, "header block too large")
        if not flags & END_HEADERS:
            self._continuation = (sid, flags, bytearray(payload))
            self._block_since = self._clock()
            return
        self._header_block(sid, flags, payload)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != sid:
            raise ConnectionFault(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = pending[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ConnectionFault(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(sid, pending[1], bytes(block))

    def _decode(self, block: bytes) -> Block:
        """A header block decoded, inspected and read by the dispatcher."""
        # A block that leaves the dynamic table as it is (indexed fields and literals without
        # indexing only) decodes the same way until another block changes the table, so what
        # is made of it is reused: clients repeat the same block for every call of a method.
        cached = self._blocks.get(block)
        if cached is not None:
            return cached
        try:
            headers = cast(list[tuple[str, str]], self._decoder.decode(block))
        except hpack.OversizedHeaderListError:  # decoding stopped midway: the tables differ
            raise ConnectionFault(PROTOCOL_ERROR, "header list too large") from None
        except hpack.HPACKError as e:
            raise ConnectionFault(COMPRESSION_ERROR, f"bad header block: {e}") from None
        malformed, size = inspect_fields(headers)
        head = None
        if malformed is None:
            try:
                head = self.dispatcher.head(headers)
            except Exception:  # a bug: the call fails (below), not the connection
                log.exception("cannot read gRPC request headers")
        decoded = Block(headers, malformed, size, head)
        if keeps_table(block):
            if len(self._blocks) < 64 and len(block) <= 1024:
                self._blocks[block] = decoded
        else:
            self._blocks.clear()
        return decoded

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        decoded = self._decode(block)  # always: the table must follow the peer's
        malformed, size = decoded.malformed, decoded.size
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client end its side
            malformed, size = inspect_fields(decoded.fields, trailers=True)
            if stream.remote_closed or not flags & END_STREAM or malformed:
                self._reset(stream, STREAM_CLOSED if stream.remote_closed else PROTOCOL_ERROR)
                return
            try:
                if size > OUR_MAX_HEADER_LIST:
                    raise StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED, "trailers too large")
                self._remote_end(stream)
            except StreamError as e:
                self._fail(stream, e)
            return
        if sid % 2 == 0:
            raise ConnectionFault(PROTOCOL_ERROR, f"bad new stream id {sid}")
        if sid <= self.last_stream_id:  # no new stream: RFC 9113 §5.1.1
            if sid in self._reset_ids:
                return  # sent before our RST_STREAM reached the client: ignored (§5.1)
            raise ConnectionFault(
                PROTOCOL_ERROR, f"new stream {sid} not above stream {self.last_stream_id}"
            )
        self.last_stream_id = sid
        if malformed:  # RFC 9113 §8.1.1: a stream error, the call never starts
            log.debug("malformed gRPC request on stream %d: %s", sid, malformed)
            self._send_reset(sid, PROTOCOL_ERROR)
            return
        if self.draining or len(self.streams) >= OUR_MAX_STREAMS:
            self._send_reset(sid, REFUSED_STREAM)
            return
        stream = Stream(self, sid)
        if size > OUR_MAX_HEADER_LIST:  # this call fails, the connection goes on
            stream.remote_closed = bool(flags & END_STREAM)
            stream.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"header list of {size} bytes larger than max ({OUR_MAX_HEADER_LIST})",
            )
            return
        self.streams[sid] = stream
        self._opened = True
        try:
            if decoded.head is None:  # the dispatcher could not read it (logged)
                stream.finish(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
                return
            stream.call = self.dispatcher.open(stream, decoded.head)
        except Exception:  # a bug must fail this call, not every call of the connection
            log.exception("cannot open gRPC stream %d", sid)
            stream.finish(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
            return
        if flags & END_STREAM and sid in self.streams:
            try:
                self._remote_end(stream)
            except StreamError as e:
                self._fail(stream, e)

    def _remote_end(self, stream: Stream) -> None:
        stream.remote_closed = True
        self._credit.pop(stream.id, None)
        if stream._buf:
            raise StreamError(grpc.StatusCode.INTERNAL, "the request ended inside a message")
        if stream.call is not None:
            stream.call.end()
        if stream.local_closed:
            self._forget(stream)

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFault(FRAME_SIZE_ERROR, "RST_STREAM not of 4 bytes")
        if not sid or self._idle_stream(sid):
            raise ConnectionFault(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.local_closed = stream.remote_closed = True
        call = stream.call
        self._forget(stream)  # frees what it buffered now, not when its handler notices
        if call is not None:
            call.reset()
            self._resets += 1
            if self._resets > MAX_NET_RESETS:
                raise ConnectionFault(ENHANCE_YOUR_CALM, "too many streams reset")

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFault(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ConnectionFault(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionFault(FLOW_CONTROL_ERROR, "connection window overflow")
            blocked, self.blocked = self.blocked, {}
            for waiting in blocked.values():
                waiting.flush()
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle_stream(sid):
                raise ConnectionFault(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if not increment:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream.out:
            self.blocked.pop(sid, None)
            stream.flush()

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise ConnectionFault(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFault(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFault(FRAME_SIZE_ERROR, "bad SETTINGS")
        for i in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, i)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFault(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ConnectionFault(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise ConnectionFault(PROTOCOL_ERROR, "bad ENABLE_PUSH")
        self.write(frame(SETTINGS, ACK, 0))
        for stream in list(self.streams.values()):
            if stream.out and stream.send_window > 0:
                stream.flush()

    # ---- helpers ---------------------------------------------------------------------------

    def _send_credit(self) -> None:
        """Refill the windows for what was read (batched: once per read, not per frame)."""
        out = []
        if self.unacked >= OUR_CONN_WINDOW // 4:
            out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.unacked)))
            self.recv_window += self.unacked
            self.unacked = 0
        if self._credit:
            for stream in self._credit.values():
                if stream.remote_closed or stream.unacked < OUR_STREAM_WINDOW // 4:
                    continue
                credit, stream.unacked = stream.unacked, 0
                if stream.backlog >= STREAM_BACKLOG:
                    stream.deferred += credit
                    continue
                stream.recv_window += credit
                out.append(frame(WINDOW_UPDATE, 0, stream.id, U32.pack(credit)))
            self._credit.clear()
        if out:
            self.write(b"".join(out))

    def _fail(self, stream: Stream, e: StreamError) -> None:
        """Answer a stream with an error status, stop reading it, drop what it buffered."""
        call = stream.call
        stream.call = None
        if call is not None:
            call.reset()
        stream.free()
        stream.finish(e.code, e.message)

    def _send_reset(self, sid: int, code: int) -> None:
        """RST_STREAM, remembered for a while (the client's frames in flight are ignored)."""
        self.write(frame(RST_STREAM, 0, sid, U32.pack(code)))
        resets = self._reset_ids
        resets[sid] = None
        if len(resets) > RECENT_RESETS:
            del resets[next(iter(resets))]

    def _reset(self, stream: Stream, code: int) -> None:
        self._send_reset(stream.id, code)
        stream.local_closed = stream.remote_closed = True
        if stream.call is not None:
            call, stream.call = stream.call, None
            call.reset()
        self._forget(stream)

    def closed_locally(self, stream: Stream) -> None:
        """Our side of `stream` is done (trailers sent)."""
        if self._resets:
            self._resets -= 1
        if not stream.remote_closed:
            # the client may still be sending: tell it to stop (as grpc servers do)
            stream.remote_closed = True
            self._send_reset(stream.id, NO_ERROR)
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._credit.pop(stream.id, None)
        stream.free()
        self._check_idle()
