"""One HTTP/2 stream of a gRPC call: splitting DATA into messages, counting what it buffers,
decompressing in bounded steps, answering under flow control."""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import Protocol

import grpc

from inferd.api.grpc.frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    MESSAGE_PREFIX,
    OUR_STREAM_WINDOW,
    STREAM_BACKLOG,
    U32,
    WINDOW_UPDATE,
    StreamError,
    frame,
)
from inferd.api.grpc.headers import OK_TRAILERS, RESPONSE_HEADERS, http_error_block, status_block
from inferd.api.grpc.limits import Budget

#: Decompressed output produced on the event loop; the rest is produced in a worker thread,
#: INFLATE_STEP bytes at a time, counted as buffered as it grows.
INFLATE_INLINE = 64 << 10
INFLATE_STEP = 1 << 20


def _too_much(where: str, limit: int) -> StreamError:
    return StreamError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many request bytes buffered {where} (max {limit})"
    )


class Link(Protocol):
    """What a stream needs of its connection (`http2.Connection` is one): the peer's and our
    flow-control state, the buffered-bytes accounting, and the socket. A protocol, so that
    this module does not import the connection's (which imports this one)."""

    max_message: int
    peer_window: int
    peer_max_frame: int
    send_window: int
    buffered: int
    max_buffered: int
    budget: Budget
    blocked: dict[int, Stream]

    def write(self, data: bytes) -> None: ...
    def closed_locally(self, stream: Stream) -> None: ...
    def peer(self) -> str: ...


class Call(Protocol):
    """What a stream reports to: set by the dispatcher when the stream opens."""

    def message(self, payload: bytes, compressed: int) -> None: ...
    def end(self) -> None: ...
    def reset(self) -> None: ...


class Stream:
    """One HTTP/2 stream of a gRPC call: its receive buffer and its side of flow control."""

    __slots__ = (
        "_buf",
        "backlog",
        "call",
        "conn",
        "deferred",
        "encoding",
        "freed",
        "headers_sent",
        "held",
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

    def __init__(self, conn: Link, stream_id: int) -> None:
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
        self.held = 0  # bytes counted in the connection's (and server's) buffered total
        self.freed = False
        self.send_window = conn.peer_window
        self.out: deque[memoryview] = deque()  # DATA payload waiting for send window
        self.trailers: bytes | None = None  # waiting behind `out`
        self.headers_sent = False
        self.remote_closed = False
        self.local_closed = False

    # ---- what it holds ---------------------------------------------------------------------

    def hold(self, n: int) -> None:
        """Count `n` more buffered bytes; over the connection's or the server's bound, the call
        fails with RESOURCE_EXHAUSTED (the bytes stay counted until `free`)."""
        if self.freed:
            return
        conn = self.conn
        budget = conn.budget
        self.held += n
        conn.buffered += n
        budget.used += n
        if conn.buffered > conn.max_buffered:
            raise _too_much("on this connection", conn.max_buffered)
        if budget.used > budget.limit:
            raise _too_much("by the server", budget.limit)

    def release(self, n: int) -> None:
        """Stop counting `n` buffered bytes (never more than are counted)."""
        if n > self.held:
            n = self.held
        self.held -= n
        self.conn.buffered -= n
        self.conn.budget.used -= n

    def free(self) -> None:
        """Drop what the stream buffers both ways, at once (reset, failure, closed)."""
        if self.held:
            self.release(self.held)
        if self._buf:
            self._buf = bytearray()  # rebound: a caller may still hold the old one
        self.out.clear()
        self.deferred = 0
        self.freed = True

    # ---- receiving -----------------------------------------------------------------------

    def receive(self, payload: bytes) -> None:
        """Split DATA into gRPC messages for the call."""
        buf = self._buf
        if not buf and len(payload) >= 5:
            flag, length = MESSAGE_PREFIX.unpack_from(payload)
            if len(payload) == length + 5:  # the common case: one whole message
                self._deliver(flag, length, payload[5:])
                return
            self._check_length(length)
        self.hold(len(payload))
        buf += payload
        while len(buf) >= 5:
            flag, length = MESSAGE_PREFIX.unpack_from(buf)
            self._check_length(length)  # before the rest of a message too large arrives
            if len(buf) < length + 5:
                return
            message = bytes(buf[5 : length + 5])
            del buf[: length + 5]
            self.release(length + 5)
            self._deliver(flag, length, message)

    def _check_length(self, length: int) -> None:
        if length > self.max_message:
            raise StreamError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({length} vs. {self.max_message})",
            )

    def _deliver(self, flag: int, length: int, message: bytes) -> None:
        self._check_length(length)
        if flag and self.encoding == "identity":
            raise StreamError(
                grpc.StatusCode.INTERNAL, "compressed message without a grpc-encoding header"
            )
        if self.call is not None:
            self.call.message(message, flag)

    def consumed(self, n: int) -> None:
        """The handler took `n` bytes of backlog (counted by `hold` too when they came):
        release them and the credit held back for them."""
        self.backlog -= n
        self.release(n)
        if self.deferred and self.backlog < STREAM_BACKLOG and not self.remote_closed:
            credit, self.deferred = self.deferred, 0
            self.recv_window += credit
            self.conn.write(frame(WINDOW_UPDATE, 0, self.id, U32.pack(credit)))

    async def inflate(self, message: bytes) -> bytes:
        """A compressed message, decompressed: at most `max_message` bytes of output (more is
        RESOURCE_EXHAUSTED, whatever the input's size), produced in steps and counted as
        buffered while it grows; beyond INFLATE_INLINE bytes off the event loop."""
        encoding = self.encoding
        d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        limit = self.max_message
        parts: list[bytes] = []
        size = counted = 0
        try:
            want = min(INFLATE_INLINE, limit + 1)
            part = d.decompress(message, want)
            while True:
                size += len(part)
                if size > limit:
                    raise StreamError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"decompressed message larger than max ({limit})",
                    )
                counted += len(part)
                self.hold(len(part))
                parts.append(part)
                if d.eof:
                    break
                if not d.unconsumed_tail and len(part) < want:  # input used up before the end
                    raise StreamError(
                        grpc.StatusCode.INTERNAL,
                        f"cannot decompress the message ({encoding}): truncated",
                    )
                want = min(INFLATE_STEP, limit + 1 - size)
                part = await asyncio.to_thread(d.decompress, d.unconsumed_tail, want)
            return b"".join(parts)
        except zlib.error as e:
            raise StreamError(
                grpc.StatusCode.INTERNAL, f"cannot decompress the message ({encoding}): {e}"
            ) from None
        finally:
            self.release(counted)

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
                + frame(DATA, 0, self.id, MESSAGE_PREFIX.pack(0, len(message)) + message)
                + frame(HEADERS, END_HEADERS | END_STREAM, self.id, OK_TRAILERS)
            )
            conn.closed_locally(self)
            return
        self.send_message(message)
        self.finish(grpc.StatusCode.OK, "")

    def send_message(self, message: bytes) -> None:
        """Queue one message (headers first if not yet sent); sent as windows allow."""
        if self.local_closed or self.trailers is not None:
            return
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.write(frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS))
        self.out.append(memoryview(MESSAGE_PREFIX.pack(0, len(message)) + message))
        self.flush()

    def pending(self) -> int:
        """Bytes queued behind flow control."""
        return sum(len(b) for b in self.out)

    def finish(self, code: grpc.StatusCode, message: str) -> None:
        """End the call with a status (trailers-only when nothing was sent yet)."""
        if self.local_closed or self.trailers is not None:
            return
        ok = code is grpc.StatusCode.OK and not message
        block = OK_TRAILERS if ok else status_block(code, message)
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
