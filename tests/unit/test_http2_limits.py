"""The native gRPC transport's bounds, frame by frame: buffered bytes per connection and per
server, message size from the length prefix, buffers freed on reset and close, decompression
bombs, the read / idle / keepalive timeouts (with an injected clock), and RFC 9113 conformance."""

from __future__ import annotations

import asyncio
import gzip
import struct
import tracemalloc
import zlib
from typing import Any

import hpack
import pytest

from inferd.api.grpc import stream as stream_module
from inferd.api.grpc.frames import KEEPALIVE_PING
from inferd.api.grpc.health import HealthCheckRequest, HealthCheckResponse
from inferd.api.grpc.http2 import Connection
from inferd.api.grpc.limits import Budget, Limits
from inferd.settings import GrpcSettings
from tests.unit.test_http2 import (
    PREFACE,
    Client,
    H,
    Wire,
    goaway_code,
    grpc_message,
    request,
    router,
    settle,
    status_of,
)

KiB, MiB = 1 << 10, 1 << 20


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def goaway_payload(c: Client) -> bytes:
    for ftype, _, _, payload in c.seen:
        if ftype == H.GOAWAY:
            return payload
    return b""


def goaway_debug(c: Client) -> bytes:
    return goaway_payload(c)[8:]


async def idle(c: Client, seconds: float = 5.0) -> None:
    """Wait until the connection has no open stream (work handed to threads included)."""
    await asyncio.wait_for(c.conn.wait_idle(), seconds)


def prefix(length: int) -> bytes:
    return struct.pack(">BL", 0, length)


def open_stream(c: Client, sid: int, path: str = "/t.S/Unary", **extra: str) -> None:
    c.send(H.frame(H.HEADERS, H.END_HEADERS, sid, c.headers(path, **extra)))


def reset_codes(c: Client) -> dict[int, int]:
    c.frames()
    return {sid: int.from_bytes(p, "big") for t, _, sid, p in c.seen if t == H.RST_STREAM}


# ---- defaults ------------------------------------------------------------------------------


def test_defaults_bound_messages_like_the_rest_body_and_match_the_settings() -> None:
    assert Limits().max_message_bytes == GrpcSettings().max_message_bytes == 64 * MiB
    assert Limits.of(GrpcSettings()) == Limits()
    assert Limits().tick_s() == 5.0  # one timer per connection, every 5 s at most
    assert Limits(idle_timeout_s=0, read_timeout_s=0, keepalive_interval_s=0).tick_s() == 0


def test_settings_refuse_buffers_smaller_than_a_message() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes_per_connection"):
        GrpcSettings(max_message_bytes=512 * MiB)
    with pytest.raises(ValueError, match="max_buffered_bytes_total"):
        GrpcSettings(max_buffered_bytes_total=128 * MiB)
    GrpcSettings(max_message_bytes=512 * MiB, max_buffered_bytes_per_connection=512 * MiB)


# ---- memory bounds -------------------------------------------------------------------------


async def test_a_huge_length_prefix_is_refused_before_its_body() -> None:
    c = Client(router(), max_message=64 * MiB)
    open_stream(c, 1)
    c.send(H.frame(H.DATA, 0, 1, prefix(1900 * MiB) + b"x" * 1000))  # "1.9 GiB coming"
    answer = c.answers()[1]
    assert status_of(answer) == (
        "8",
        f"Received message larger than max ({1900 * MiB} vs. {64 * MiB})",
    )
    assert answer["rst"] == H.NO_ERROR  # the client is told to stop sending
    assert c.conn.buffered == 0 and c.conn.budget.used == 0
    # the prefix alone, split over two frames, is refused as soon as it is whole
    open_stream(c, 3)
    c.send(H.frame(H.DATA, 0, 3, prefix(65 * MiB)[:3]))
    assert 3 not in c.answers()
    c.send(H.frame(H.DATA, 0, 3, prefix(65 * MiB)[3:]))
    assert status_of(c.answers()[3])[0] == "8"
    c.call(5, request("ok"))
    await settle()
    assert status_of(c.answers()[5]) == ("0", "")


async def test_partial_messages_are_bounded_per_connection() -> None:
    c = Client(router(), max_message=MiB, max_buffered_bytes_per_connection=MiB)
    chunk = 400 * KiB
    for sid in (1, 3, 5):  # three messages of 1 MiB announced, 400 KiB of each sent
        open_stream(c, sid)
        c.send(H.frame(H.DATA, 0, sid, prefix(MiB) + b"\0" * chunk))
    answers = c.answers()
    assert 1 not in answers and 3 not in answers  # still receiving
    assert status_of(answers[5]) == (
        "8",
        f"too many request bytes buffered on this connection (max {MiB})",
    )
    assert c.conn.buffered == 2 * (chunk + 5) == c.conn.budget.used
    c.send(H.frame(H.RST_STREAM, 0, 1, struct.pack(">L", H.CANCEL)))
    assert c.conn.buffered == chunk + 5  # stream 3's partial message only
    c.call(7, request("room again"))
    await settle()
    assert status_of(c.answers()[7]) == ("0", "")
    assert c.conn.buffered == chunk + 5 and 3 in c.conn.streams


async def test_buffered_bytes_are_bounded_per_server() -> None:
    budget = Budget(MiB)
    a = Client(router(), max_message=MiB, budget=budget)
    b = Client(router(), max_message=MiB, budget=budget)
    open_stream(a, 1)
    a.send(H.frame(H.DATA, 0, 1, prefix(MiB) + b"\0" * (700 * KiB)))
    open_stream(b, 1)
    b.send(H.frame(H.DATA, 0, 1, prefix(MiB) + b"\0" * (400 * KiB)))
    assert status_of(b.answers()[1]) == (
        "8",
        f"too many request bytes buffered by the server (max {MiB})",
    )
    assert budget.used == 700 * KiB + 5 and b.conn.buffered == 0
    b.call(3, request("small"))  # what fits still goes through, on either connection
    await settle()
    assert status_of(b.answers()[3]) == ("0", "")
    a.conn.connection_lost(None)
    assert budget.used == 0


async def test_reset_frees_the_buffer_at_once() -> None:
    c = Client(router(), max_message=8 * MiB)
    open_stream(c, 1)
    tracemalloc.start()
    try:
        c.send(H.frame(H.DATA, 0, 1, prefix(8 * MiB)))
        for _ in range(6):
            c.send(H.frame(H.DATA, 0, 1, b"\0" * MiB))
        held, _peak = tracemalloc.get_traced_memory()
        stream = c.conn.streams[1]
        assert c.conn.buffered == 6 * MiB + 5 == stream.held
        c.send(H.frame(H.RST_STREAM, 0, 1, struct.pack(">L", H.CANCEL)))
        after, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - after > 5 * MiB  # the bytes themselves are gone, not only the count
    assert c.conn.buffered == 0 and c.conn.budget.used == 0 and stream.held == 0
    assert not stream._buf and 1 not in c.conn.streams


async def test_closing_the_connection_frees_every_buffer() -> None:
    budget = Budget(1 << 30)
    c = Client(router(), max_message=4 * MiB, budget=budget)
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    c.send(H.frame(H.DATA, 0, 1, request("queued") + prefix(4 * MiB) + b"\0" * (MiB // 2)))
    open_stream(c, 3)
    c.send(H.frame(H.DATA, 0, 3, request("no END_STREAM")))  # a whole unary message, kept
    assert budget.used > MiB // 2
    streams = list(c.conn.streams.values())
    c.conn.connection_lost(None)
    await settle()
    assert budget.used == 0 and all(s.held == 0 and not s._buf for s in streams)


async def test_client_stream_backlog_is_released_as_the_handler_reads() -> None:
    c = Client(router())
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    c.send(H.frame(H.DATA, 0, 1, request("a") * 50))
    assert c.conn.buffered > 0
    await settle()
    assert c.conn.buffered == 0  # the handler took them all
    c.send(H.frame(H.DATA, H.END_STREAM, 1, b""))
    await settle()
    assert c.answers()[1]["ended"]


# ---- decompression -------------------------------------------------------------------------


def gzip_of_zeros(n: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    out = [z.compress(block) for _ in range(n // MiB)]
    return b"".join([*out, z.compress(bytes(n % MiB)), z.flush()])


@pytest.fixture
def thread_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How much output each decompression step run in a worker thread was allowed."""
    steps: list[int] = []
    real = asyncio.to_thread

    async def counting(func: Any, *args: Any) -> Any:
        steps.append(args[-1])
        return await real(func, *args)

    monkeypatch.setattr(stream_module.asyncio, "to_thread", counting)
    return steps


async def test_a_gzip_bomb_stays_bounded(thread_steps: list[int]) -> None:
    bomb = gzip_of_zeros(128 * MiB)  # 128 KiB that would inflate to 128 MiB
    assert len(bomb) < 200 * KiB
    c = Client(router(), max_message=8 * MiB)
    c.frames()
    tracemalloc.start()
    try:
        c.call(1, grpc_message(bomb, compressed=True), grpc_encoding="gzip")
        await idle(c)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    answer = c.answers()[1]
    assert status_of(answer) == ("8", f"decompressed message larger than max ({8 * MiB})")
    assert peak < 8 * MiB + 4 * MiB  # the limit and a step of output, never the 128 MiB
    assert len(thread_steps) == 8 and max(thread_steps) <= MiB  # off the loop, 1 MiB a step
    assert c.conn.buffered == 0 and c.conn.budget.used == 0


async def test_large_compressed_messages_inflate_off_the_loop(thread_steps: list[int]) -> None:
    c = Client(router(), max_message=4 * MiB)
    big = HealthCheckRequest(service="z" * (3 * MiB)).SerializeToString()
    c.call(1, grpc_message(gzip.compress(big), compressed=True), grpc_encoding="gzip")
    small = HealthCheckRequest(service="small").SerializeToString()
    c.call(3, grpc_message(zlib.compress(small), compressed=True), grpc_encoding="deflate")
    await idle(c)
    answers = c.answers()
    assert HealthCheckResponse.FromString(answers[1]["data"][5:]).status == 3 * MiB
    assert HealthCheckResponse.FromString(answers[3]["data"][5:]).status == 5
    assert len(thread_steps) == 3  # only the large one, in 1 MiB steps after 64 KiB inline
    assert c.conn.buffered == 0


async def test_a_truncated_compressed_message_is_refused() -> None:
    c = Client(router())
    raw = gzip.compress(HealthCheckRequest(service="cut short").SerializeToString())
    c.call(1, grpc_message(raw[:-12], compressed=True), grpc_encoding="gzip")
    c.call(3, grpc_message(b"not gzip at all", compressed=True), grpc_encoding="gzip")
    await settle()
    answers = c.answers()
    assert status_of(answers[1]) == ("13", "cannot decompress the message (gzip): truncated")
    assert status_of(answers[3])[0] == "13"


async def test_client_stream_with_a_bomb_fails_the_call_only() -> None:
    c = Client(router(), max_message=MiB)
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo", grpc_encoding="gzip")))
    c.send(H.frame(H.DATA, 0, 1, grpc_message(gzip_of_zeros(8 * MiB), compressed=True)))
    await idle(c)
    assert status_of(c.answers()[1])[0] == "8"
    c.call(3, request("still fine"))
    await settle()
    assert status_of(c.answers()[3]) == ("0", "")


# ---- timeouts --------------------------------------------------------------------------------


def test_an_incomplete_frame_is_cut_at_the_read_deadline() -> None:
    clock = Clock()
    c = Client(router(), clock=clock, read_timeout_s=10, idle_timeout_s=0, keepalive_interval_s=0)
    c.frames()
    frame = H.frame(H.PING, 0, 0, b"12345678")
    c.send(frame[:5])  # half a frame header
    clock.now += 6
    c.send(frame[5:9])  # more bytes of the same frame do not move its deadline
    c.conn.tick()
    assert not c.wire.closed
    clock.now += 5
    c.conn.tick()
    c.frames()
    assert c.wire.aborted and goaway_code(c) == H.NO_ERROR
    assert goaway_debug(c).startswith(b"read timeout")


def test_frames_that_keep_completing_are_not_cut() -> None:
    clock = Clock()
    c = Client(router(), clock=clock, read_timeout_s=10, idle_timeout_s=0, keepalive_interval_s=0)
    ping = H.frame(H.PING, 0, 0, b"12345678")
    c.send(ping[:10])
    for _ in range(5):  # each read completes a frame and starts the next: 40 s in all
        clock.now += 8
        c.send(ping[10:] + ping[:10])
        c.conn.tick()
    assert not c.wire.closed
    c.send(ping[10:])
    clock.now += 100
    c.conn.tick()  # nothing incomplete: no read deadline (and the other timers are off)
    assert not c.wire.closed


def test_a_header_block_without_its_continuation_is_cut() -> None:
    clock = Clock()
    c = Client(router(), clock=clock, read_timeout_s=10, idle_timeout_s=0, keepalive_interval_s=0)
    block = c.headers()
    c.send(H.frame(H.HEADERS, 0, 1, block[:5]))  # whole frames, but the block never ends
    clock.now += 11
    c.conn.tick()
    assert c.wire.aborted


def test_a_missing_preface_is_cut() -> None:
    clock = Clock()
    wire = Wire()
    conn = Connection(router(), Limits(read_timeout_s=10), clock=clock)
    conn.connection_made(wire)  # type: ignore[arg-type]
    conn.data_received(PREFACE[:10])
    clock.now += 11
    conn.tick()
    assert wire.aborted


async def test_an_idle_connection_is_closed_but_not_one_with_a_call() -> None:
    clock = Clock()
    r = router()
    c = Client(r, clock=clock, idle_timeout_s=60, read_timeout_s=0, keepalive_interval_s=0)
    c.call(1, request("x"))
    await settle()
    clock.now += 50
    c.conn.tick()  # the call was 50 s ago... but the tick saw it only now
    clock.now += 50
    c.conn.tick()
    assert not c.wire.closed
    c.call(3, request(""), path="/t.S/Slow")  # a call that runs long keeps it open
    await settle()
    for _ in range(5):
        clock.now += 50
        c.conn.tick()
    assert not c.wire.closed
    for call in list(r.calls):
        call.reset()
    await settle()
    clock.now += 30
    c.conn.tick()
    clock.now += 31
    c.conn.tick()
    c.frames()
    assert c.wire.closed and goaway_code(c) == H.NO_ERROR
    assert goaway_debug(c).startswith(b"idle timeout")


def test_keepalive_pings_a_silent_client_and_closes_when_unanswered() -> None:
    clock = Clock()
    c = Client(
        router(),
        clock=clock,
        keepalive_interval_s=30,
        keepalive_timeout_s=10,
        idle_timeout_s=0,
        read_timeout_s=0,
    )
    c.conn.tick()  # reads seen (the preface): active now
    c.frames()
    clock.now += 29
    c.conn.tick()
    assert not c.frames()
    clock.now += 2
    c.conn.tick()
    assert c.frames() == [(H.PING, 0, 0, KEEPALIVE_PING)]
    c.send(H.frame(H.PING, H.ACK, 0, KEEPALIVE_PING))  # answered: alive
    clock.now += 20
    c.conn.tick()
    assert not c.wire.closed
    clock.now += 31
    c.conn.tick()
    assert c.frames() == [(H.PING, 0, 0, KEEPALIVE_PING)]
    clock.now += 11  # not answered this time
    c.conn.tick()
    c.frames()
    assert c.wire.aborted and goaway_debug(c).startswith(b"keepalive timeout")


def test_a_client_reading_its_answers_slowly_is_not_cut() -> None:
    clock = Clock()
    c = Client(router(), clock=clock, keepalive_interval_s=30, keepalive_timeout_s=10)
    c.conn.pause_writing()  # our answers pile up: we stop reading it
    c.wire.buffered = 1000
    c.conn.tick()
    for _ in range(10):
        clock.now += 20
        c.wire.buffered -= 10  # ... but it takes them, slowly
        c.conn.tick()
    assert not c.wire.closed
    for _ in range(3):  # and then it stops reading at all
        clock.now += 20
        c.conn.tick()
    assert c.wire.aborted


def test_a_connection_closed_for_a_fault_is_dropped_if_it_does_not_drain() -> None:
    c = Client(router())
    c.send(H.frame(H.PING, 0, 0, b"short"))  # GOAWAY, then close once the output is sent
    assert c.wire.closed and not c.wire.aborted
    c.conn._on_timer()  # a tick later, still there: the client does not read
    assert c.wire.aborted


async def test_one_timer_per_connection_not_per_frame() -> None:
    c = Client(router(), read_timeout_s=30)
    timer = c.conn._timer
    assert timer is not None
    for sid in range(1, 200, 2):
        c.call(sid, request("x"))
    await settle()
    assert c.conn._timer is timer  # re-armed only when it fires
    c.conn.connection_lost(None)
    assert timer.cancelled()


# ---- RFC 9113 conformance: connection errors -------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (H.frame(H.SETTINGS, H.ACK, 0, b"\0\4\0\0\0\1"), H.FRAME_SIZE_ERROR),
        (H.frame(H.SETTINGS, 0, 0, struct.pack(">HL", H.ENABLE_PUSH, 2)), H.PROTOCOL_ERROR),
        (H.frame(H.PING, 0, 0, b"1234567"), H.FRAME_SIZE_ERROR),
        (H.frame(H.PING, 0, 1, b"12345678"), H.PROTOCOL_ERROR),
        (H.frame(H.RST_STREAM, 0, 5, struct.pack(">L", H.CANCEL)), H.PROTOCOL_ERROR),  # idle
        (H.frame(H.RST_STREAM, 0, 2, struct.pack(">L", H.CANCEL)), H.PROTOCOL_ERROR),  # even
        (H.frame(H.RST_STREAM, 0, 0, struct.pack(">L", H.CANCEL)), H.PROTOCOL_ERROR),
        (H.frame(H.RST_STREAM, 0, 1, b"\0\0\0"), H.FRAME_SIZE_ERROR),
        (H.frame(H.WINDOW_UPDATE, 0, 7, b"\0\0\1\0"), H.PROTOCOL_ERROR),  # idle stream
        (H.frame(H.GOAWAY, 0, 1, b"\0" * 8), H.PROTOCOL_ERROR),
    ],
)
def test_frame_level_faults_are_connection_errors(bad: bytes, code: int) -> None:
    c = Client(router())
    c.send(bad)
    c.frames()
    assert goaway_code(c) == code and c.wire.closed


async def test_settings_that_are_fine_are_acked() -> None:
    c = Client(router())
    c.frames()
    c.send(H.frame(H.SETTINGS, 0, 0, struct.pack(">HL", H.ENABLE_PUSH, 0)))
    c.send(H.frame(H.SETTINGS, H.ACK, 0))
    assert c.frames() == [(H.SETTINGS, H.ACK, 0, b"")]


async def test_a_decreasing_stream_id_is_a_connection_error() -> None:
    c = Client(router())
    c.call(5, request("a"))
    await settle()
    c.call(3, request("b"))  # below 5: never a new stream
    c.frames()
    assert goaway_code(c) == H.PROTOCOL_ERROR and c.wire.closed
    assert int.from_bytes(goaway_payload(c)[:4], "big") == 5  # the last stream it took


async def test_reusing_a_finished_stream_id_is_a_connection_error() -> None:
    c = Client(router())
    c.call(1, request("a"))
    await settle()
    assert status_of(c.answers()[1]) == ("0", "")
    c.call(1, request("again"))
    c.frames()
    assert goaway_code(c) == H.PROTOCOL_ERROR


async def test_headers_on_a_stream_we_reset_are_ignored() -> None:
    c = Client(router(), max_message=100)
    open_stream(c, 1)
    c.send(H.frame(H.DATA, 0, 1, prefix(1000)))  # refused: we reset stream 1 (NO_ERROR)
    c.send(H.frame(H.HEADERS, H.END_HEADERS | H.END_STREAM, 1, c.headers()))  # in flight
    c.call(3, request("next"))
    await settle()
    assert status_of(c.answers()[3]) == ("0", "") and goaway_code(c) is None


# ---- RFC 9113 conformance: malformed requests are stream errors ------------------------------


def raw_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """Literal fields without indexing, bytes as given (hpack's encoder would lower-case)."""
    out = b""
    for name, value in fields:
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


GOOD = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/t.S/Unary"),
    (b":authority", b"x"),
    (b"content-type", b"application/grpc"),
]


@pytest.mark.parametrize(
    "fields",
    [
        [*GOOD, (b"X-Upper", b"1")],
        [*GOOD, (b"connection", b"keep-alive")],
        [*GOOD, (b"keep-alive", b"5")],
        [*GOOD, (b"proxy-connection", b"x")],
        [*GOOD, (b"transfer-encoding", b"chunked")],
        [*GOOD, (b"upgrade", b"h2c")],
        [*GOOD, (b"te", b"gzip")],
        [*GOOD, (b"x-crlf", b"a\r\nb: c")],
        [*GOOD, (b"x-nul", b"a\x00b")],
        [*GOOD, (b"x-space", b" padded")],
        [*GOOD, (b"bad name", b"x")],
        [GOOD[0], (b"content-type", b"application/grpc"), *GOOD[1:4]],  # pseudo after regular
        [*GOOD, (b":status", b"200")],  # a response pseudo-header
        [*GOOD, (b":path", b"/t.S/Unary")],  # twice
        [GOOD[0], GOOD[1], GOOD[3], GOOD[4]],  # no :path
        [GOOD[0], GOOD[1], (b":path", b""), GOOD[3], GOOD[4]],
    ],
)
async def test_malformed_requests_are_reset_and_never_reach_a_handler(
    fields: list[tuple[bytes, bytes]],
) -> None:
    r = router()
    c = Client(r)
    c.send(
        H.frame(H.HEADERS, H.END_HEADERS, 1, raw_block(fields))
        + H.frame(H.DATA, H.END_STREAM, 1, request(""))  # sent before the reset arrives
    )
    await settle()
    answer = c.answers()[1]
    assert answer["rst"] == H.PROTOCOL_ERROR and not answer["headers"]
    assert not r.calls and not c.conn.streams
    c.call(3, request("the connection goes on"))
    await settle()
    assert status_of(c.answers()[3]) == ("0", "") and goaway_code(c) is None


async def test_well_formed_raw_requests_pass() -> None:
    c = Client(router())
    c.send(
        H.frame(H.HEADERS, H.END_HEADERS, 1, raw_block([*GOOD, (b"te", b"trailers")]))
        + H.frame(H.DATA, H.END_STREAM, 1, request("abc"))
    )
    await settle()
    assert status_of(c.answers()[1]) == ("0", "")


async def test_trailers_from_the_client_end_its_side() -> None:
    c = Client(router())
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    c.send(H.frame(H.DATA, 0, 1, request("a")))
    c.send(H.frame(H.HEADERS, H.END_HEADERS | H.END_STREAM, 1, raw_block([(b"x-sum", b"1")])))
    await settle()
    answer = c.answers()[1]
    assert answer["ended"] and status_of(answer) == ("0", "") and answer["rst"] is None


async def test_trailers_over_the_header_list_limit_fail_the_call() -> None:
    c = Client(router())
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    big = hpack.Encoder().encode([("x-big", "v" * (H.OUR_MAX_HEADER_LIST + 10))])
    c.send(H.frame(H.HEADERS, H.END_HEADERS | H.END_STREAM, 1, big))
    await settle()
    assert status_of(c.answers()[1]) == ("8", "trailers too large") and goaway_code(c) is None


async def test_pseudo_headers_in_trailers_reset_the_stream() -> None:
    c = Client(router())
    c.send(H.frame(H.HEADERS, H.END_HEADERS, 1, c.headers("/t.S/Echo")))
    c.send(H.frame(H.DATA, 0, 1, request("a")))
    c.send(H.frame(H.HEADERS, H.END_HEADERS | H.END_STREAM, 1, raw_block([(b":path", b"/x")])))
    await settle()
    assert reset_codes(c)[1] == H.PROTOCOL_ERROR and not c.conn.streams


async def test_frames_after_the_client_ended_its_side_reset_the_stream() -> None:
    r = router()
    c = Client(r)
    c.call(1, request(""), path="/t.S/Slow")
    await settle()
    c.send(H.frame(H.DATA, 0, 1, request("more")))  # its side is closed already
    await settle()
    assert reset_codes(c)[1] == H.STREAM_CLOSED and not r.calls
    c.call(3, request(""), path="/t.S/Slow")
    await settle()
    c.send(H.frame(H.HEADERS, H.END_HEADERS | H.END_STREAM, 3, c.headers()))
    await settle()
    assert reset_codes(c)[3] == H.STREAM_CLOSED and not r.calls and goaway_code(c) is None


async def test_metadata_over_the_header_list_limit_fails_only_its_call() -> None:
    c = Client(router())
    c.call(1, request(""), path="/t.S/Meta", x_big="v" * (H.OUR_MAX_HEADER_LIST + 100))
    await settle()
    answer = c.answers()[1]
    assert status_of(answer)[0] == "8" and "header list" in status_of(answer)[1]
    assert answer["ended"] and goaway_code(c) is None
    c.call(3, request(""), path="/t.S/Meta", x_key="fine")
    await settle()
    assert HealthCheckResponse.FromString(c.answers()[3]["data"][5:]).status == 4


async def test_a_header_list_beyond_any_limit_is_a_connection_error() -> None:
    c = Client(router())
    enc = hpack.Encoder()
    fields = [(":method", "POST"), (":path", "/t.S/Unary"), ("x-pad", "p" * 4000)]
    block = enc.encode(fields) + b"\xbe" * 40  # index 62 (x-pad) 40 more times: 160 KiB
    c.send(
        H.frame(H.HEADERS, 0, 1, block[:100])
        + H.frame(H.CONTINUATION, H.END_HEADERS, 1, block[100:])
    )
    c.frames()
    assert goaway_code(c) == H.PROTOCOL_ERROR
