"""The native gRPC transport's HTTP/2 layer, driven frame by frame through an in-memory transport:
framing, header blocks, flow control both ways, deadlines, resets and protocol faults."""

from __future__ import annotations

import asyncio
import gzip
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import hpack
import pytest

from inferd.api.grpc import frames
from inferd.api.grpc.calls import Method, Router, parse_timeout
from inferd.api.grpc.headers import keeps_table
from inferd.api.grpc.health import HealthCheckRequest, HealthCheckResponse
from inferd.api.grpc.http2 import Connection
from inferd.api.grpc.limits import Budget, Limits

H = frames
PREFACE = H.PREFACE


class Wire:
    """The server side of a connection as a byte sink (the in-process twin of a socket)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = self.aborted = False
        self.reading = True
        self.buffered = 0  # what the socket has not sent yet

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if key == "peername" else default


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    frames, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append((ftype, flags, sid, bytes(data[pos + 9 : pos + 9 + length])))
        pos += 9 + length
    assert pos == len(data), "partial frame written"
    return frames


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BL", int(compressed), len(payload)) + payload


class Client:
    """A hand-driven HTTP/2 client: encodes requests, decodes what the server wrote."""

    def __init__(
        self,
        router: Router,
        max_message: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
        budget: Budget | None = None,
        **limits: Any,
    ) -> None:
        self.wire = Wire()
        limited = Limits(max_message_bytes=max_message, **limits)
        self.conn = Connection(router, limited, budget=budget, clock=clock)
        self.conn.connection_made(self.wire)  # type: ignore[arg-type]
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.seen: list[tuple[int, int, int, bytes]] = []
        self.send(PREFACE + H.frame(H.SETTINGS, 0, 0))

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def headers(self, path: str = "/t.S/Unary", **extra: str) -> bytes:
        fields = [
            (":method", extra.pop("method", "POST")),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", extra.pop("content_type", "application/grpc")),
            ("te", "trailers"),
            *extra.items(),
        ]
        return bytes(self.encoder.encode([(k.replace("_", "-"), v) for k, v in fields]))

    def call(self, sid: int, body: bytes, path: str = "/t.S/Unary", **extra: str) -> None:
        self.send(
            H.frame(H.HEADERS, H.END_HEADERS, sid, self.headers(path, **extra))
            + H.frame(H.DATA, H.END_STREAM, sid, body)
        )

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        new = parse(bytes(self.wire.out))
        self.wire.out.clear()
        self.seen += new
        return new

    def answers(self) -> dict[int, dict[str, Any]]:
        """Per stream: headers, trailers, messages, whether it ended, RST code."""
        out: dict[int, dict[str, Any]] = {}
        for ftype, flags, sid, payload in self.frames():
            s = out.setdefault(sid, {"headers": {}, "data": b"", "ended": False, "rst": None})
            if ftype == H.HEADERS:
                s["headers"].update(dict(self.decoder.decode(payload)))
                s["ended"] |= bool(flags & H.END_STREAM)
            elif ftype == H.DATA:
                s["data"] += payload
                s["ended"] |= bool(flags & H.END_STREAM)
            elif ftype == H.RST_STREAM:
                s["rst"] = int.from_bytes(payload, "big")
        return out


async def unary(request: Any, context: Any) -> Any:
    return HealthCheckResponse(status=len(request.service))


async def metadata(request: Any, context: Any) -> Any:
    md = dict(context.invocation_metadata())
    return HealthCheckResponse(status=len(md.get("x-key", "")) + len(md.get("blob-bin", b"")))


async def slow(request: Any, context: Any) -> Any:
    await asyncio.Event().wait()  # until cancelled
    return HealthCheckResponse(status=1)


async def echo_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for r in requests:
        yield HealthCheckResponse(status=len(r.service))


async def failing(request: Any, context: Any) -> Any:
    import grpc

    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: 100%")


def router(**more: Method) -> Router:
    r = Router()
    parse_req = HealthCheckRequest.FromString
    r.add(Method("/t.S/Unary", unary, parse_req))
    r.add(Method("/t.S/Meta", metadata, parse_req))
    r.add(Method("/t.S/Slow", slow, parse_req))
    r.add(Method("/t.S/Fail", failing, parse_req))
    r.add(Method("/t.S/Echo", echo_stream, parse_req, client_streaming=True, server_streaming=True))
    for m in more.values():
        r.add(m)
    return r


def request(service: str) -> bytes:
    return grpc_message(HealthCheckRequest(service=service).SerializeToString())


def status_of(answer: dict[str, Any]) -> tuple[str, str]:
    return answer["headers"].get("grpc-status", "?"), answer["headers"].get("grpc-message", "")


def goaway_code(c: Client) -> int | None:
    for ftype, _, _, payload in c.seen:
        if ftype == H.GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ---- the happy path --------------------------------------------------------------------------


async def test_settings_then_unary_answer_in_one_write() -> None:
    c = Client(router())
    first = c.frames()
    assert first[0][0] == H.SETTINGS and first[1][0] == H.WINDOW_UPDATE
    assert any(f[0] == H.SETTINGS and f[1] & H.ACK for f in first)  # our SETTINGS acked
    c.call(1, request("abc"))
    await settle()
    answer = c.answers()[1]
    assert answer["headers"][":status"] == "200"
    assert answer["headers"]["content-type"] == "application/grpc"
    assert status_of(answer) == ("0", "")
    assert answer["ended"]
    reply = HealthCheckResponse.FromString(answer["data"][5:])
    assert reply.status == 3
    assert not c.conn.streams  # stream forgotten once both sides are done


async def test_many_interleaved_streams_and_split_frames() -> None:
    c = Client(router())
    c.frames()
    blob = b""
    for sid in range(1, 40, 2):
        blob += H.frame(H.HEADERS, H.END_HEADERS, sid, c.headers())
    for sid in range(1, 40, 2):
        blob += H.frame(H.DATA, H.END_STREAM, sid, request("x" * sid))
    for i in range(0, len(blob), 7):  # arrive 7 bytes at a time
        c.send(blob[i : i + 7])
    await settle()
    answers = c.answers()
    for sid in range(1, 40, 2):
        assert HealthCheckResponse.FromString(answers[sid]["data"][5:]).status == sid


async def test_message_split_over_data_frames_and_padding() -> None:
    c = Client(router())
    msg = request("hello world")
    padded = bytes([4]) + msg[6:] + b"\0" * 4
    c.send(
        H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers())
        + H.frame(H.DATA, 0, 1, msg[:3])
        + H.frame(H.DATA, 0, 1, msg[3:6])
        + H.frame(H.DATA, H.END_STREAM | H.PADDED, 1, padded)
    )
    await settle()
    assert HealthCheckResponse.FromString(c.answers()[1]["data"][5:]).status == 11


async def test_continuation_frames_and_metadata() -> None:
    c = Client(router())
    block = c.headers("/t.S/Meta", x_key="k" * 3000, blob_bin="AAEC")
    c.send(
        H.frame(H.HEADERS, 0, 1, block[:10])
        + H.frame(H.CONTINUATION, 0, 1, block[10:100])
        + H.frame(H.CONTINUATION, H.END_HEADERS, 1, block[100:])
        + H.frame(H.DATA, H.END_STREAM, 1, request(""))
    )
    await settle()
    answer = c.answers()[1]
    assert HealthCheckResponse.FromString(answer["data"][5:]).status == 3000 + 3  # b"\0\1\2"


async def test_compressed_requests() -> None:
    c = Client(router())
    raw = HealthCheckRequest(service="zipped").SerializeToString()
    c.call(1, grpc_message(gzip.compress(raw), True), grpc_encoding="gzip")
    c.call(3, grpc_message(zlib.compress(raw), True), grpc_encoding="deflate")
    c.call(5, grpc_message(raw, True))  # compressed flag without an encoding
    c.call(7, grpc_message(raw), grpc_encoding="snappy")
    await settle()
    answers = c.answers()
    for sid in (1, 3):
        assert HealthCheckResponse.FromString(answers[sid]["data"][5:]).status == 6
    assert status_of(answers[5])[0] == "13"
    assert status_of(answers[7]) == ("12", "Compression algorithm 'snappy' not supported")


async def test_client_stream_echo() -> None:
    c = Client(router())
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    c.send(H.frame(H.DATA, 0, 1, request("a") + request("bb")))
    await settle()
    partial = c.answers()[1]
    assert not partial["ended"]
    c.send(H.frame(H.DATA, H.END_STREAM, 1, request("ccc")))
    await settle()
    data = partial["data"] + c.answers()[1]["data"]
    statuses = []
    while data:
        n = int.from_bytes(data[1:5], "big")
        statuses.append(HealthCheckResponse.FromString(data[5 : 5 + n]).status)
        data = data[5 + n :]
    assert statuses == [1, 2, 3]


async def test_client_stream_message_that_does_not_parse(caplog: pytest.LogCaptureFixture) -> None:
    c = Client(router())
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    c.send(H.frame(H.DATA, 0, 1, grpc_message(b"\xff\xff\xff")))
    await settle()
    assert status_of(c.answers()[1]) == ("13", "cannot parse the request message")  # as unary
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# ---- statuses --------------------------------------------------------------------------------


async def test_unknown_method_wrong_verb_and_content_type() -> None:
    c = Client(router())
    c.call(1, request(""), path="/t.S/Nope")
    c.call(3, request(""), method="GET")
    c.call(5, request(""), content_type="application/json")
    await settle()
    answers = c.answers()
    assert status_of(answers[1]) == ("12", "Method not found: /t.S/Nope")
    assert answers[3]["headers"][":status"] == "405"
    assert answers[5]["headers"][":status"] == "415"
    assert all(answers[s]["ended"] for s in (1, 3, 5))


async def test_abort_percent_encodes_the_message() -> None:
    c = Client(router())
    c.call(1, request(""), path="/t.S/Fail")
    await settle()
    answer = c.answers()[1]
    assert status_of(answer) == ("5", "no such thing: 100%25")
    assert answer["data"] == b""  # trailers-only


async def test_unary_with_two_messages_or_none() -> None:
    c = Client(router())
    c.call(1, request("a") + request("b"))
    c.call(3, b"")
    await settle()
    answers = c.answers()
    assert status_of(answers[1])[0] == "12"
    assert status_of(answers[3])[0] == "12"


async def test_message_over_the_limit_is_refused_before_it_arrives() -> None:
    c = Client(router(), max_message=1000)
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers()))
    c.send(H.frame(H.DATA, 0, 1, struct.pack(">BL", 0, 5000) + b"x" * 100))
    await settle()
    answer = c.answers()[1]
    assert status_of(answer) == ("8", "Received message larger than max (5000 vs. 1000)")
    assert answer["rst"] == H.NO_ERROR  # the client is told to stop sending
    c.send(H.frame(H.DATA, H.END_STREAM, 1, b"y" * 100))  # late data is ignored
    c.call(3, request("ok"))
    await settle()
    assert status_of(c.answers()[3]) == ("0", "")


async def test_deadline_ends_the_call_and_cancels_the_handler() -> None:
    c = Client(router())
    c.call(1, request(""), path="/t.S/Slow", grpc_timeout="50m")
    await asyncio.wait_for(c.conn.wait_idle(), 5)  # the deadline ends the call, not a sleep
    answer = c.answers()[1]
    assert status_of(answer) == ("4", "Deadline Exceeded")
    await settle()
    assert not c.conn.dispatcher.calls  # type: ignore[attr-defined]


def test_grpc_timeout_units() -> None:
    assert parse_timeout("5S") == 5
    assert parse_timeout("250m") == 0.25
    assert parse_timeout("2H") == 7200
    assert parse_timeout("1n") == 1e-9
    assert parse_timeout("123456789S") is None
    assert parse_timeout("S") is None and parse_timeout("5x") is None


async def test_client_reset_cancels_the_handler() -> None:
    r = router()
    c = Client(r)
    c.call(1, request(""), path="/t.S/Slow")
    await settle()
    assert len(r.calls) == 1
    c.send(H.frame(H.RST_STREAM, 0, 1, struct.pack(">L", H.CANCEL)))
    await settle()
    assert not r.calls and not c.conn.streams
    assert 1 not in c.answers()  # nothing is sent on a reset stream


async def test_connection_loss_cancels_every_call() -> None:
    r = router()
    c = Client(r)
    for sid in (1, 3, 5):
        c.call(sid, request(""), path="/t.S/Slow")
    await settle()
    assert len(r.calls) == 3
    c.conn.connection_lost(None)
    await settle()
    assert not r.calls


# ---- flow control ----------------------------------------------------------------------------


async def test_large_answer_waits_for_window_updates() -> None:
    size = 300_000

    async def large(request: Any, context: Any) -> Any:
        return HealthCheckRequest(service="z" * size)

    r = router(big=Method("/t.S/Big", large, HealthCheckRequest.FromString))
    c = Client(r)
    c.call(1, request(""), path="/t.S/Big")
    await settle()
    first = c.answers()[1]
    assert len(first["data"]) == 65_535 and not first["ended"]  # the default window
    received = first["data"]
    for _ in range(20):
        c.send(
            H.frame(H.WINDOW_UPDATE, 0, 0, struct.pack(">L", 50_000))
            + H.frame(H.WINDOW_UPDATE, 0, 1, struct.pack(">L", 50_000))
        )
        a = c.answers().get(1)
        if a:
            received += a["data"]
            if a["ended"]:
                assert status_of(a) == ("0", "")
                break
    assert len(HealthCheckRequest.FromString(received[5:]).service) == size
    frames = [f for f in c.seen if f[0] == H.DATA]
    assert max(len(f[3]) for f in frames) <= 16_384  # the peer's max frame size


async def test_settings_raise_the_stream_window() -> None:
    async def large(request: Any, context: Any) -> Any:
        return HealthCheckRequest(service="z" * 100_000)

    c = Client(router(big=Method("/t.S/Big", large, HealthCheckRequest.FromString)))
    c.call(1, request(""), path="/t.S/Big")
    await settle()
    got = len(c.answers()[1]["data"])
    c.send(
        H.frame(H.WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 20))
        + H.frame(H.SETTINGS, 0, 0, struct.pack(">HL", H.INITIAL_WINDOW_SIZE, 1 << 20))
    )
    answer = c.answers()[1]
    whole = len(HealthCheckRequest(service="z" * 100_000).SerializeToString()) + 5
    assert got + len(answer["data"]) == whole and answer["ended"]


async def test_received_data_is_credited_back() -> None:
    c = Client(router())
    c.frames()
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    chunk = grpc_message(HealthCheckRequest(service="q" * 600_000).SerializeToString())
    sent = 0
    updates = 0
    while sent < H.OUR_STREAM_WINDOW * 2:  # more than one window: only credit lets it through
        c.send(H.frame(H.DATA, 0, 1, chunk))
        sent += len(chunk)
        await settle()
        updates += sum(1 for f in c.frames() if f[0] == H.WINDOW_UPDATE and f[2] == 1)
    assert updates >= 1
    assert goaway_code(c) is None and 1 in c.conn.streams


async def test_data_beyond_the_stream_window_resets_the_stream() -> None:
    c = Client(router(), max_message=64 << 20)
    frames = [H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers())]
    body = struct.pack(">BL", 0, 32 << 20) + b"\0" * (H.OUR_STREAM_WINDOW + H.OUR_MAX_FRAME)
    for i in range(0, len(body), H.OUR_MAX_FRAME):
        frames.append(H.frame(H.DATA, 0, 1, body[i : i + H.OUR_MAX_FRAME]))
    c.send(b"".join(frames))  # all at once: more than the window before any credit
    c.frames()
    assert any(
        f[0] == H.RST_STREAM and f[3] == struct.pack(">L", H.FLOW_CONTROL_ERROR) for f in c.seen
    )


# ---- connection errors -----------------------------------------------------------------------


def test_not_http2_is_closed() -> None:
    wire = Wire()
    conn = Connection(router(), Limits())
    conn.connection_made(wire)  # type: ignore[arg-type]
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.closed


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (H.frame(H.DATA, 0, 0, b"x"), H.PROTOCOL_ERROR),
        (H.frame(H.HEADERS, H.END_HEADERS, 2, b"\x82"), H.PROTOCOL_ERROR),  # even id
        (H.frame(H.HEADERS, H.END_HEADERS, 1, b"\xff\xff\xff\xff"), H.COMPRESSION_ERROR),
        (H.frame(H.CONTINUATION, H.END_HEADERS, 1, b""), H.PROTOCOL_ERROR),
        (H.frame(H.PUSH_PROMISE, 0, 1, b"\0\0\0\2"), H.PROTOCOL_ERROR),
        (H.frame(H.SETTINGS, 0, 0, b"\0\4\x80\0\0\0"), H.FLOW_CONTROL_ERROR),
        (H.frame(H.SETTINGS, 0, 0, b"\0\5\0\0\0\1"), H.PROTOCOL_ERROR),
        (H.frame(H.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), H.PROTOCOL_ERROR),
        (H.frame(H.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), H.FLOW_CONTROL_ERROR),
        (H.frame(H.PING, 0, 0, b"short"), H.FRAME_SIZE_ERROR),
        (H.frame(H.DATA, 0, 9, b"x"), H.PROTOCOL_ERROR),  # idle stream
        (b"\x20\0\0\0\0\0\0\0\x01", H.FRAME_SIZE_ERROR),  # a 2 MiB frame header
    ],
)
def test_protocol_faults_end_the_connection_with_goaway(bad: bytes, code: int) -> None:
    c = Client(router())
    c.send(bad)
    c.frames()
    assert goaway_code(c) == code
    assert c.wire.closed


async def test_ping_is_answered() -> None:
    c = Client(router())
    c.frames()
    c.send(H.frame(H.PING, 0, 0, b"12345678"))
    assert c.frames() == [(H.PING, H.ACK, 0, b"12345678")]


async def test_goaway_refuses_new_streams_and_closes_when_idle() -> None:
    r = router()
    c = Client(r)
    c.call(1, request(""), path="/t.S/Slow")
    await settle()
    c.conn.goaway()
    c.call(3, request("late"))
    await settle()
    answers = c.answers()
    assert answers[3]["rst"] == H.REFUSED_STREAM
    assert not c.wire.closed  # stream 1 is still running
    for call in list(r.calls):
        call.reset()
    await settle()
    assert c.wire.closed


async def test_too_many_streams_are_refused() -> None:
    c = Client(router())
    blob = b"".join(
        H.frame(H.HEADERS, H.END_HEADERS, 2 * i + 1, c.headers("/t.S/Slow"))
        for i in range(H.OUR_MAX_STREAMS + 1)
    )
    c.send(blob)
    last = 2 * H.OUR_MAX_STREAMS + 1
    assert c.answers()[last]["rst"] == H.REFUSED_STREAM
    c.conn.connection_lost(None)
    await settle()


async def test_rapid_reset_closes_the_connection() -> None:
    c = Client(router())
    for i in range(H.MAX_NET_RESETS + 1):
        sid = 2 * i + 1
        c.send(
            H.frame(H.HEADERS, H.END_HEADERS, sid, c.headers("/t.S/Slow"))
            + H.frame(H.DATA, H.END_STREAM, sid, request(""))
            + H.frame(H.RST_STREAM, 0, sid, struct.pack(">L", H.CANCEL))
        )
        if c.wire.closed:
            break
    c.frames()
    assert goaway_code(c) == H.ENHANCE_YOUR_CALM and c.wire.closed
    await settle()


async def test_resets_balanced_by_answers_are_fine() -> None:
    c = Client(router())
    for i in range(2 * H.MAX_NET_RESETS):
        c.call(4 * i + 1, request("ok"))
        await settle()
        c.send(
            H.frame(H.HEADERS, H.END_HEADERS, 4 * i + 3, c.headers("/t.S/Slow"))
            + H.frame(H.RST_STREAM, 0, 4 * i + 3, struct.pack(">L", H.CANCEL))
        )
    c.frames()
    assert goaway_code(c) is None and not c.wire.closed


def test_a_client_that_does_not_read_is_not_read_from() -> None:
    c = Client(router())
    c.conn.pause_writing()
    assert not c.wire.reading
    c.conn.resume_writing()
    assert c.wire.reading


def test_which_header_blocks_leave_the_table_alone() -> None:
    enc = hpack.Encoder()
    fields = [(":method", "POST"), (":path", "/t.S/Unary"), ("x-id", "1")]
    assert not keeps_table(enc.encode(fields))  # first use: fields enter the table
    assert keeps_table(enc.encode(fields))  # now only indexes
    never = [hpack.NeverIndexedHeaderTuple("authorization", "secret")]
    assert keeps_table(enc.encode(never))
    enc.header_table_size = 1024
    assert not keeps_table(enc.encode(fields))  # carries a table size update
    assert not keeps_table(b"\x0f")  # truncated


async def test_cached_header_blocks_follow_table_changes() -> None:
    c = Client(router())
    for i, key in enumerate(["a", "a", "bb", "bb", "a"]):
        # the same literal-free block means different things once the table changes
        c.call(2 * i + 1, request(""), path="/t.S/Meta", x_key=key)
        await settle()
        answer = c.answers()[2 * i + 1]
        assert HealthCheckResponse.FromString(answer["data"][5:]).status == len(key)


async def test_answer_over_the_limit_is_not_sent() -> None:
    async def large(request: Any, context: Any) -> Any:
        return HealthCheckRequest(service="z" * 2000)

    c = Client(router(big=Method("/t.S/Big", large, HealthCheckRequest.FromString)), 1000)
    c.call(1, request(""), path="/t.S/Big")
    await settle()
    answer = c.answers()[1]
    assert status_of(answer) == ("8", "Sent message larger than max (2003 vs. 1000)")
    assert answer["data"] == b""


async def test_an_empty_header_name_is_ignored() -> None:
    c = Client(router())
    block = c.headers() + b"\x00\x00\x01x"  # literal, empty name, value "x"
    c.send(
        H.frame(H.HEADERS, H.END_HEADERS, 1, block) + H.frame(H.DATA, H.END_STREAM, 1, request("a"))
    )
    await settle()
    assert status_of(c.answers()[1]) == ("0", "")
