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
import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

import hpack

log = logging.getLogger("inferd.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6
MAX_WINDOW = 2**31 - 1

_FRAME = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_MESSAGE = struct.Struct(">BL")  # gRPC message prefix: compressed flag, length

#: What this server offers its peers.
OUR_MAX_FRAME = 1 << 20
OUR_STREAM_WINDOW = 4 << 20
OUR_CONN_WINDOW = 16 << 20
OUR_MAX_STREAMS = 1024
OUR_MAX_HEADER_LIST = 32 << 10
#: Complete messages of a client stream waiting for its handler beyond which the stream's
#: window is no longer refilled (the client then waits).
STREAM_BACKLOG = 4 << 20
#: Client resets of running calls, net of calls answered, after which the connection is closed
#: (a client that opens and resets streams in a loop, "rapid reset", makes the server work for
#: nothing while never reaching the stream limit).
MAX_NET_RESETS = 200
#: Longest grpc-message sent back (the whole header block must fit one 16 KiB frame).
MAX_STATUS_MESSAGE = 4096


def frame(ftype: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman coding."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8 with bytes outside 0x20-0x7E and '%' percent-encoded."""
    raw = message.encode("utf-8", "replace")[:MAX_STATUS_MESSAGE]
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


# `:status: 200` (static index 8) and `content-type: application/grpc` (name index 31).
RESPONSE_HEADERS = b"\x88\x0f\x10\x10application/grpc"
OK_TRAILERS = _literal(b"grpc-status", b"0")


def status_block(code: int, message: str) -> bytes:
    """The trailer fields of a status (without `:status`)."""
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message))
    return block


def http_error_block(status: int) -> bytes:
    """A plain HTTP error response to a request that is not gRPC."""
    return b"\x08" + _hpack_int(3, 7) + str(status).encode()


class StreamError(Exception):
    """A gRPC status to answer a stream with (raised while reading its messages)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call(Protocol):
    """What a stream reports to: set by the dispatcher when the stream opens."""

    def message(self, payload: bytes) -> None: ...
    def end(self) -> None: ...
    def reset(self) -> None: ...


class Dispatcher(Protocol):
    """Opens a call for each new stream (or answers the stream at once and returns None)."""

    def open(self, stream: Stream, headers: list[tuple[str, str]]) -> Call | None: ...


class Stream:
    """One HTTP/2 stream of a gRPC call: its receive buffer and its side of flow control."""

    __slots__ = (
        "_buf",
        "backlog",
        "call",
        "conn",
        "deferred",
        "encoding",
        "headers_sent",
        "id",
        "local_closed",
        "max_message",
        "out",
        "recv_window",
        "remote_closed",
        "send_window",
        "trailers",
        "unacked",
    )

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.call: Call | None = None
        self.encoding = "identity"
        self.max_message = conn.max_message
        self._buf = bytearray()
        self.recv_window = OUR_STREAM_WINDOW
        self.unacked = 0  # received bytes not yet credited back
        self.deferred = 0  # credit held back while the backlog is full
        self.backlog = 0  # bytes of complete messages not yet taken by the handler
        self.send_window = conn.peer_window
        self.out: deque[memoryview] = deque()  # DATA payload waiting for send window
        self.trailers: bytes | None = None  # waiting behind `out`
        self.headers_sent = False
        self.remote_closed = False
        self.local_closed = False

    # ---- receiving -----------------------------------------------------------------------

    def _data(self, payload: bytes) -> None:
        """Split DATA into gRPC messages for the call."""
        buf = self._buf
        if not buf and len(payload) >= 5:
            flag, length = _MESSAGE.unpack_from(payload)
            if len(payload) == length + 5:  # the common case: one whole message
                self._deliver(flag, length, payload[5:])
                return
        buf += payload
        while len(buf) >= 5:
            flag, length = _MESSAGE.unpack_from(buf)
            if length > self.max_message:
                self._deliver(flag, length, b"")  # raises
            if len(buf) < length + 5:
                return
            message = bytes(buf[5 : length + 5])
            del buf[: length + 5]
            self._deliver(flag, length, message)

    def _deliver(self, flag: int, length: int, message: bytes) -> None:
        if length > self.max_message:
            raise StreamError(
                8, f"Received message larger than max ({length} vs. {self.max_message})"
            )
        if flag:
            message = self._decompress(message)
        if self.call is not None:
            self.call.message(message)

    def _decompress(self, message: bytes) -> bytes:
        encoding = self.encoding
        if encoding == "identity":
            raise StreamError(13, "compressed message without a grpc-encoding header")
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(message, self.max_message + 1)
        except zlib.error as e:
            raise StreamError(13, f"cannot decompress the message ({encoding}): {e}") from None
        if len(out) > self.max_message or d.unconsumed_tail:
            raise StreamError(8, f"decompressed message larger than max ({self.max_message})")
        return out

    def consumed(self, n: int) -> None:
        """The handler took `n` bytes of backlog: release credit held back for them."""
        self.backlog -= n
        if self.deferred and self.backlog < STREAM_BACKLOG and not self.remote_closed:
            credit, self.deferred = self.deferred, 0
            self.recv_window += credit
            self.conn.write(frame(WINDOW_UPDATE, 0, self.id, _U32.pack(credit)))

    # ---- sending -------------------------------------------------------------------------

    def respond(self, message: bytes) -> None:
        """A whole unary answer: headers, one message, OK trailers (one write when it fits)."""
        conn = self.conn
        if self.local_closed:
            return
        size = len(message) + 5
        if (
            not self.headers_sent
            and size <= self.send_window
            and size <= conn.send_window
            and size <= conn.peer_max_frame
        ):
            self.send_window -= size
            conn.send_window -= size
            self.headers_sent = self.local_closed = True
            conn.write(
                frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS)
                + frame(DATA, 0, self.id, _MESSAGE.pack(0, len(message)) + message)
                + frame(HEADERS, END_HEADERS | END_STREAM, self.id, OK_TRAILERS)
            )
            conn.closed_locally(self)
            return
        self.send_message(message)
        self.finish(0, "")

    def send_message(self, message: bytes) -> None:
        """Queue one message (headers first if not yet sent); sent as windows allow."""
        if self.local_closed or self.trailers is not None:
            return
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.write(frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS))
        self.out.append(memoryview(_MESSAGE.pack(0, len(message)) + message))
        self.flush()

    def pending(self) -> int:
        """Bytes queued behind flow control."""
        return sum(len(b) for b in self.out)

    def finish(self, code: int, message: str) -> None:
        """End the call with a status (trailers-only when nothing was sent yet)."""
        if self.local_closed or self.trailers is not None:
            return
        block = status_block(code, message) if code or message else OK_TRAILERS
        if not self.headers_sent:
            self.headers_sent = True
            self.trailers = RESPONSE_HEADERS + block
        else:
            self.trailers = block
        self.flush()

    def flush(self) -> None:
        """Send what the windows allow; the trailers once all data is out."""
        conn = self.conn
        out = self.out
        chunks: list[bytes] = []
        while out:
            room = min(self.send_window, conn.send_window, conn.peer_max_frame)
            if room <= 0:
                conn.blocked[self.id] = self
                break
            head = out[0]
            if len(head) <= room:
                out.popleft()
                part = head
            else:  # views: splitting a large message copies nothing
                part, out[0] = head[:room], head[room:]
            self.send_window -= len(part)
            conn.send_window -= len(part)
            chunks.append(frame(DATA, 0, self.id, part))
        trailers = self.trailers
        done = not out and trailers is not None and not self.local_closed
        if done and trailers is not None:
            self.local_closed = True
            chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, self.id, trailers))
        if chunks:
            conn.write(b"".join(chunks))
        if done:
            conn.closed_locally(self)

    def reply_http(self, status: int) -> None:
        """Answer a request that is not gRPC with a bare HTTP status."""
        self.headers_sent = self.local_closed = True
        self.conn.write(frame(HEADERS, END_HEADERS | END_STREAM, self.id, http_error_block(status)))
        self.conn.closed_locally(self)


class ConnectionError_(Exception):
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        self.goaway_sent = False
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
            _SETTING.pack(k, v)
            for k, v in (
                (MAX_CONCURRENT_STREAMS, OUR_MAX_STREAMS),
                (INITIAL_WINDOW_SIZE, OUR_STREAM_WINDOW),
                (MAX_FRAME_SIZE, OUR_MAX_FRAME),
                (MAX_HEADER_LIST_SIZE, OUR_MAX_HEADER_LIST),
            )
        )
        self.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(OUR_CONN_WINDOW - 65_535))
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return
        try:
            if not self._preface:
                if buf[: len(PREFACE)] != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[: len(PREFACE)]
                self._preface = True
            self._frames(buf)
            self._send_credit()
        except ConnectionError_ as e:
            self.abort(e.code, str(e))

    def _frames(self, buf: bytearray) -> None:
        pos, n = 0, len(buf)
        try:
            with memoryview(buf) as view:
                while n - pos >= 9:
                    hi, lo, ftype, flags, sid = _FRAME.unpack_from(view, pos)
                    length = (hi << 8) | lo
                    if length > OUR_MAX_FRAME:
                        raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
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
            raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
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
                raise ConnectionError_(PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            if not sid or len(payload) != 4:
                raise ConnectionError_(PROTOCOL_ERROR, "bad RST_STREAM")
            stream = self.streams.pop(sid, None)
            self.blocked.pop(sid, None)
            if stream is not None:
                stream.local_closed = stream.remote_closed = True
                if stream.call is not None:
                    stream.call.reset()
                    self._resets += 1
                    if self._resets > MAX_NET_RESETS:
                        raise ConnectionError_(ENHANCE_YOUR_CALM, "too many streams reset")
                self._check_idle()
        elif ftype == GOAWAY:
            self.goaway_sent = True  # no new streams either way
            self._check_idle()
        elif ftype == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == PRIORITY and not sid:
            raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
        # PRIORITY and unknown frame types are ignored

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window exceeded")
        self.unacked += size
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream already answered or reset: ignored
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        stream.unacked += size
        try:
            if payload:
                stream._data(payload)
            if flags & END_STREAM:
                self._remote_end(stream)
            elif stream.unacked:
                self._credit[sid] = stream
        except StreamError as e:
            self._fail(stream, e)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & END_HEADERS:
            self._continuation = (sid, flags, bytearray(payload))
            return
        self._header_block(sid, flags, payload)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        pending = self._continuation
        if pending is None or pending[0] != sid:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = pending[2]
        block += payload
        if len(block) > 4 * OUR_MAX_HEADER_LIST:
            raise ConnectionError_(PROTOCOL_ERROR, "header block too large")
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
            raise ConnectionError_(PROTOCOL_ERROR, "header list too large") from None
        except hpack.HPACKError as e:
            raise ConnectionError_(COMPRESSION_ERROR, f"bad header block: {e}") from None
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
            raise ConnectionError_(PROTOCOL_ERROR, f"bad new stream id {sid}")
        self.last_stream_id = sid
        if self.goaway_sent or len(self.streams) >= OUR_MAX_STREAMS:
            self.write(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        stream = Stream(self, sid)
        self.streams[sid] = stream
        self.idle.clear()
        stream.call = self.dispatcher.open(stream, headers)
        if flags & END_STREAM and sid in self.streams:
            try:
                self._remote_end(stream)
            except StreamError as e:
                self._fail(stream, e)

    def _remote_end(self, stream: Stream) -> None:
        stream.remote_closed = True
        self._credit.pop(stream.id, None)
        if stream._buf:
            raise StreamError(13, "the request ended inside a message")
        if stream.call is not None:
            stream.call.end()
        if stream.local_closed:
            self._forget(stream)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
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
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad SETTINGS")
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
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
            out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.unacked)))
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
                out.append(frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(credit)))
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
        self.write(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
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
            self.write(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._credit.pop(stream.id, None)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.streams:
            self.idle.set()
            if self.goaway_sent and self.transport is not None:
                self.transport.close()

    def goaway(self, code: int = NO_ERROR, message: str = "") -> None:
        """Tell the client no new streams will be taken; close once the open ones are done."""
        if self.closed or (self.goaway_sent and code == NO_ERROR):
            return
        self.goaway_sent = True
        self.write(
            frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream_id, code) + message.encode()[:256])
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


def _int_end(block: bytes, pos: int, prefix_mask: int) -> tuple[int, int]:
    """An HPACK integer at `pos`: (value, position after it)."""
    value = block[pos] & prefix_mask
    pos += 1
    if value < prefix_mask:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def keeps_table(block: bytes) -> bool:
    """Whether decoding `block` leaves the HPACK dynamic table unchanged (no literal with
    incremental indexing, no table size update). Only walks the representations; a malformed
    block is not cacheable."""
    pos, n = 0, len(block)
    try:
        while pos < n:
            b = block[pos]
            if b & 0x80:  # indexed field
                _, pos = _int_end(block, pos, 0x7F)
            elif (b & 0xE0) in (0x20, 0x40, 0x60):  # adds to the table or resizes it
                return False
            else:  # literal without indexing / never indexed: name index or name, then value
                index, pos = _int_end(block, pos, 0x0F)
                if not index:
                    length, pos = _int_end(block, pos, 0x7F)
                    pos += length
                length, pos = _int_end(block, pos, 0x7F)
                pos += length
    except IndexError:
        return False
    return pos == n


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
