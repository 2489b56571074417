"""Fuzz target: the native gRPC transport's HTTP/2 connection (`api/grpc/http2.py` and the
stream, frame and HPACK handling under it), fed arbitrary bytes after the client preface
through the in-memory transport the unit tests use.

Input layout: one byte is the read size the bytes arrive in (0: all at once), the rest is what
the client sends after `PRI * HTTP/2.0...`. The router has a unary method, a bytes echo whose
answer outgrows the flow-control windows, and a client+server streaming echo.

Invariants: `data_received` raises nothing (protocol faults become GOAWAY, stream faults
RST_STREAM or a gRPC status); nothing is logged at ERROR (a handler or dispatcher crash); every
header block decodes exactly as a fresh reference HPACK decoder fed the same blocks decodes it
(the per-connection block cache must never answer differently); the server writes only whole
frames no larger than the peer allows, with header blocks that decode on their own; once the
connection is lost no call task is left running. A hang is a bug too (libFuzzer -timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from harness import instrument, run

with instrument(__name__, "inferd", "hpack"):
    import hpack

    from inferd.api.grpc import frames as H
    from inferd.api.grpc.calls import Method, Router
    from inferd.api.grpc.health import HealthCheckRequest, HealthCheckResponse
    from inferd.api.grpc.http2 import Connection
    from inferd.api.grpc.limits import Limits

MAX_MESSAGE = 1 << 18


class Wire:
    """The server side of a connection as a byte sink (the in-process twin of a socket)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        if not self.closed:  # asyncio's and uvloop's transports drop writes after close()
            self.out += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if key == "peername" else default


class Blob:
    """A response message that is raw bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # the protobuf method name
        return self.data


async def unary(request: Any, context: Any) -> Any:
    return HealthCheckResponse(status=len(request.service))


async def big(request: bytes, context: Any) -> Blob:
    return Blob((request or b"x") * (200_000 // max(len(request), 1)))


async def echo(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for r in requests:
        yield HealthCheckResponse(status=len(r.service))


def _router() -> Router:
    r = Router()
    parse = HealthCheckRequest.FromString
    r.add(Method("/t.S/Unary", unary, parse))
    r.add(Method("/t.S/Big", big, bytes))
    r.add(Method("/t.S/Echo", echo, parse, client_streaming=True, server_streaming=True))
    return r


ROUTER = _router()


class Errors(logging.Handler):
    """Collects ERROR records of the transport: each is a crash the transport swallowed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


ERRORS = Errors()


def _checked_decode(conn: Connection) -> None:
    """Decode every header block with a reference decoder too; both must agree."""
    reference = hpack.Decoder()
    reference.max_header_list_size = conn._decoder.max_header_list_size
    decode = conn._decode

    def checked(block: bytes) -> Any:
        try:
            expected: list[tuple[str, str]] | None = list(reference.decode(block))
        except hpack.HPACKError:
            expected = None
        try:
            got = decode(block)
        except H.ConnectionFault:
            assert expected is None, f"valid header block refused: {block.hex()}"
            raise
        assert expected is not None, f"invalid header block accepted: {block.hex()}"
        fields = got[0] if isinstance(got, tuple) else got  # (fields, ...) or fields
        assert list(fields) == expected, (block.hex(), fields, expected)
        return got

    conn._decode = checked  # type: ignore[method-assign]


def _check_output(out: bytes, max_frame: int) -> None:
    pos = 0
    while len(out) - pos >= 9:
        length = int.from_bytes(out[pos : pos + 3], "big")
        ftype, flags = out[pos + 3], out[pos + 4]
        assert length <= max_frame, f"frame of {length} bytes, the peer allows {max_frame}"
        payload = out[pos + 9 : pos + 9 + length]
        assert len(payload) == length, "partial frame written"
        if ftype == H.HEADERS:
            assert flags & H.END_HEADERS, "header block split (never done by this server)"
            hpack.Decoder().decode(payload)  # static and literal fields only
        pos += 9 + length
    assert pos == len(out), "partial frame header written"


async def _session(data: bytes) -> None:
    wire = Wire()
    conn = Connection(ROUTER, Limits(max_message_bytes=MAX_MESSAGE))
    conn.connection_made(wire)  # type: ignore[arg-type]
    _checked_decode(conn)
    step = data[0] if data else 0
    stream = H.PREFACE + data[1:]
    step = step or len(stream)
    max_frame = 16_384
    for i in range(0, len(stream), step):
        if wire.closed or not wire.reading:  # a closed or paused socket delivers nothing
            break
        conn.data_received(stream[i : i + step])
        max_frame = max(max_frame, conn.peer_max_frame)
        await asyncio.sleep(0)  # calls run between reads, as they would on a socket
    for _ in range(4):
        await asyncio.sleep(0)
    conn.connection_lost(None)
    for _ in range(4):
        await asyncio.sleep(0)
    _check_output(bytes(wire.out), max_frame)
    left = asyncio.all_tasks() - {asyncio.current_task()}
    for task in left:
        task.cancel()
    assert not left, f"call tasks still running after the connection was lost: {left}"


def test_one_input(data: bytes) -> None:
    ERRORS.records.clear()
    # Collected, not printed, and only for this input: a replay inside pytest leaves the
    # logger as other tests expect it.
    logger = logging.getLogger("inferd.grpc")
    logger.addHandler(ERRORS)
    propagate, logger.propagate = logger.propagate, False
    loop = asyncio.new_event_loop()
    crashes: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: crashes.append(context))
    try:
        loop.run_until_complete(_session(data))
    finally:
        loop.close()
        logger.removeHandler(ERRORS)
        logger.propagate = propagate
    ROUTER.calls.clear()
    assert not crashes, crashes
    assert not ERRORS.records, [r.getMessage() + str(r.exc_info) for r in ERRORS.records]


if __name__ == "__main__":
    run(test_one_input)
