"""HTTP/2 server connections for gRPC, on the event loop (RFC 9113 + "gRPC over HTTP2").

One `Connection` per TCP connection: it parses frames, decodes header blocks (HPACK, with the
`hpack` library), runs flow control both ways and splits DATA into length-prefixed gRPC messages.
What a stream carries is handed to the `Dispatcher` (`inferd.api.grpc.calls`), which answers
through the stream's `send_*` / `finish` methods. Everything runs on the loop thread: no thread
hops per call, unlike grpcio's completion-queue poller, which is where grpc.aio's time went.

Response headers are encoded without the dynamic table (static indexes and literals), so they
are constant bytes and the peer's table size never matters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

import grpc
import hpack

from inferd.api.grpc.errors import INTERNAL_MESSAGE
from inferd.api.grpc.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    GOAWAY_BODY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
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
    REFUSED_STREAM,
    RST_STREAM,
    SETTING,
    SETTINGS,
    STREAM_BACKLOG,
    U32,
    WINDOW_UPDATE,
    ConnectionFault,
    StreamError,
    frame,
    unpad,
)
from inferd.api.grpc.headers import keeps_table
from inferd.api.grpc.stream import Call, Stream

log = logging.getLogger("inferd.grpc")


class Dispatcher(Protocol):
    """Opens a call for each new stream (or answers the stream at once and returns None)."""

    def open(self, stream: Stream, headers: list[tuple[str, str]]) -> Call | None: ...


class Connection(asyncio.Protocol):
    """One client connection; `on_close` is told when it is gone."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        max_message: int,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.max_message = max_message
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.peer_window = 65_535
        self.peer_max_frame = 16_384
        self.send_window = 65_535
        self.recv_window = OUR_CONN_WINDOW
        self.unacked = 0
        self.draining = False  # GOAWAY sent or received: no new streams
        self.closed = False
        self.idle = asyncio.Event()
        self.idle.set()
        self._preface = False
        self._buf = bytearray()
        self._need = len(PREFACE)
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = OUR_MAX_HEADER_LIST
        self._blocks: dict[bytes, list[tuple[str, str]]] = {}
        self._continuation: tuple[int, int, bytearray] | None = None
        self._credit: dict[int, Stream] = {}
        self._resets = 0

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
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

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return
        try:
            if not self._preface:
                if buf[: len(PREFACE)] != PREFACE:
                    raise ConnectionFault(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[: len(PREFACE)]
                self._preface = True
            self._frames(buf)
            self._send_credit()
        except ConnectionFault as e:
            self.abort(e.code, str(e))

    def _frames(self, buf: bytearray) -> None:
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
                        return
                    payload = bytes(view[pos + 9 : end])
                    pos = end
                    self._frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                    if self.closed:
                        return
                self._need = 9
        finally:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.call is not None:
                stream.call.reset()
        self.idle.set()
        if self.on_close is not None:
            self.on_close(self)

    def eof_received(self) -> bool:
        return False

    # A client that does not read what it is sent (PING or SETTINGS floods, large answers) is not
    # read from either until it catches up, so the output buffer stays bounded.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

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
            if sid or len(payload) != 8:
                raise ConnectionFault(PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            if not sid or len(payload) != 4:
                raise ConnectionFault(PROTOCOL_ERROR, "bad RST_STREAM")
            stream = self.streams.pop(sid, None)
            self.blocked.pop(sid, None)
            if stream is not None:
                stream.local_closed = stream.remote_closed = True
                if stream.call is not None:
                    stream.call.reset()
                    self._resets += 1
                    if self._resets > MAX_NET_RESETS:
                        raise ConnectionFault(ENHANCE_YOUR_CALM, "too many streams reset")
                self._check_idle()
        elif ftype == GOAWAY:
            self.draining = True
            self._check_idle()
        elif ftype == PUSH_PROMISE:
            raise ConnectionFault(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == PRIORITY and not sid:
            raise ConnectionFault(PROTOCOL_ERROR, "PRIORITY on stream 0")
        # PRIORITY and unknown frame types are ignored

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
        if stream is None or stream.remote_closed:
            if sid > self.last_stream_id:
                raise ConnectionFault(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream already answered or reset: ignored
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
        if not flags & END_HEADERS:
            self._continuation = (sid, flags, bytearray(payload))
            return
        self._header_block(sid, flags, payload)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != sid:
            raise ConnectionFault(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = pending[2]
        block += payload
        if len(block) > 4 * OUR_MAX_HEADER_LIST:
            raise ConnectionFault(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(sid, pending[1], bytes(block))

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        # A block that leaves the dynamic table as it is (indexed fields and literals without
        # indexing only) decodes the same way until another block changes the table, so its
        # decoding is reused: clients repeat the same block for every call of a method.
        cached = self._blocks.get(block)
        if cached is not None:
            return cached
        try:
            headers = cast(list[tuple[str, str]], self._decoder.decode(block))
        except hpack.OversizedHeaderListError:
            raise ConnectionFault(PROTOCOL_ERROR, "header list too large") from None
        except hpack.HPACKError as e:
            raise ConnectionFault(COMPRESSION_ERROR, f"bad header block: {e}") from None
        if keeps_table(block):
            if len(self._blocks) < 64:
                self._blocks[block] = headers
        else:
            self._blocks.clear()
        return headers

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decode(block)  # always: the table must follow the peer's
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client end its side
            if not flags & END_STREAM:
                self._reset(stream, PROTOCOL_ERROR)
                return
            try:
                self._remote_end(stream)
            except StreamError as e:
                self._fail(stream, e)
            return
        if sid % 2 == 0 or sid <= self.last_stream_id:
            if sid <= self.last_stream_id and sid % 2:
                return  # a stream already closed
            raise ConnectionFault(PROTOCOL_ERROR, f"bad new stream id {sid}")
        self.last_stream_id = sid
        if self.draining or len(self.streams) >= OUR_MAX_STREAMS:
            self.write(frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM)))
            return
        stream = Stream(self, sid)
        self.streams[sid] = stream
        self.idle.clear()
        try:
            stream.call = self.dispatcher.open(stream, headers)
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
        self.write(frame(SETTINGS, ACK, 0))
        for stream in list(self.streams.values()):
            if stream.out and stream.send_window > 0:
                stream.flush()

    # ---- helpers ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

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
        """Answer a stream with an error status and stop reading it."""
        call = stream.call
        stream.call = None
        if call is not None:
            call.reset()
        stream.out.clear()
        stream.finish(e.code, e.message)

    def _reset(self, stream: Stream, code: int) -> None:
        self.write(frame(RST_STREAM, 0, stream.id, U32.pack(code)))
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
            self.write(frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR)))
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._credit.pop(stream.id, None)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.streams:
            self.idle.set()
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
