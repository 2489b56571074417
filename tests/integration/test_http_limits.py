"""The HTTP listener against slow and oversized clients: head and body deadlines, keep-alive,
header count and size, wire chunks, connections per client address (api/http/protocol.py).

A real server on a real socket with deadlines of about a second; the clients are raw sockets
(to send exactly the bytes an attacker would), httpx and tritonclient.http. Waits are upper
bounds on when the server must have acted, far above the configured deadlines."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from websockets.exceptions import InvalidHandshake
from websockets.sync.client import connect as ws_connect

from inferd import serve
from inferd.runner import RunningServer

HEAD_S = 1.0
BODY_S = 1.0
KEEP_ALIVE_S = 2.0
PER_CLIENT = 8
MAX_CHUNKS = 64
#: How long a test waits for the server to act: deadlines plus a wide margin for a busy machine.
WAIT_S = 8.0

INFER = "/v2/models/echo/infer"


class Echo:
    def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, Any]:
        return {"OUT": inputs["IN"]}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = serve(
        models={
            "echo": {
                "model": Echo(),
                "inputs": [{"name": "IN", "datatype": "FP32", "shape": [-1]}],
                "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [-1]}],
            }
        },
        http_port=0,
        block=False,
        log_level="warning",
        grpc={"enabled": False},
        http={
            "header_timeout_s": HEAD_S,
            "body_timeout_s": BODY_S,
            "keep_alive_timeout_s": KEEP_ALIVE_S,
            "max_connections_per_client": PER_CLIENT,
            "max_chunks": MAX_CHUNKS,
        },
    )
    assert running is not None
    with running:
        yield running


def _infer_body(n: int = 2) -> bytes:
    doc = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [n], "data": [1.5] * n}]}
    return json.dumps(doc).encode()


def _connect(server: RunningServer, source: str | None = None) -> socket.socket:
    s = socket.socket()
    if source is not None:
        s.bind((source, 0))
    s.settimeout(WAIT_S)
    s.connect(("127.0.0.1", server.port))
    return s


def _read_until_closed(s: socket.socket, timeout: float = WAIT_S) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed); fails if it has
    not closed within `timeout`."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {timeout} s; got {out[:200]!r}")
    return out


def _response(s: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response, read off a connection that stays open."""
    r = http.client.HTTPResponse(s)
    r.begin()
    body = r.read()
    return r.status, body


def _post(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


GET = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"


# Head deadline


def test_trickled_head_is_cut_off_at_the_deadline(server: RunningServer) -> None:
    # One header byte every 0.1 s: uvicorn's keep-alive timer, reset by every byte, never fired.
    trickle = itertools.cycle(b"X-Slow: 1\r\n")
    s = _connect(server)
    s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: t\r\n")
    start = time.monotonic()
    reply = b""
    s.settimeout(0.1)
    with s:
        while True:
            assert time.monotonic() - start < WAIT_S, "a trickled head kept its connection open"
            try:
                s.sendall(bytes([next(trickle)]))
                reply = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset: the server closed while a byte was on its way
                break
            reply += _read_until_closed(s)
            break
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
    if reply:
        assert b"http.header_timeout_s" in reply


def test_a_connection_that_sends_nothing_is_closed(server: RunningServer) -> None:
    with _connect(server) as s:
        assert _read_until_closed(s) == b""


# Body deadline


def test_stalled_body_gets_408(server: RunningServer) -> None:
    with _connect(server) as s:
        s.sendall(_post(_infer_body())[:-5])  # all but the last 5 bytes of the body
        reply = _read_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"http.body_timeout_s" in reply and b"connection: close" in reply


def test_huge_content_length_with_a_few_bytes_is_disconnected(server: RunningServer) -> None:
    with _connect(server) as s:
        s.sendall(
            b"POST "
            + INFER.encode()
            + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 60000000\r\n\r\nabc"
        )
        reply = _read_until_closed(s)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply


def test_slow_but_steady_body_earns_time_and_the_next_stall_is_cut(server: RunningServer) -> None:
    # 400 KB in 8 pieces over ~1.6 s (> body_timeout_s): each 16 KiB received adds a second.
    request = _post(_infer_body(60_000))
    step = len(request) // 8 + 1
    with _connect(server) as s:
        for i in range(0, len(request), step):
            s.sendall(request[i : i + step])
            time.sleep(0.2)
        status, body = _response(s)
        assert status == 200, body[:300]
        # The next request on the connection starts from nothing: its stall is cut.
        s.sendall(_post(_infer_body())[:-5])
        reply = _read_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 408"), reply


# Keep-alive


def test_keep_alive_clients_work_and_idle_connections_close(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        ports = set()
        for _ in range(5):
            r = c.post(INFER, content=_infer_body())
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1.5, 1.5]
            ports.add(r.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert len(ports) == 1  # one kept-alive connection served all five
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        for _ in range(3):
            x = httpclient.InferInput("IN", [3], "FP32")
            x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
            result = triton.infer("echo", [x])
            np.testing.assert_array_equal(result.as_numpy("OUT"), [1, 2, 3])
    finally:
        triton.close()
    # The idle keep-alive timer is the configured one (it was a fixed 30 s).
    with _connect(server) as s:
        s.sendall(GET)
        assert _response(s)[0] == 200
        start = time.monotonic()
        assert _read_until_closed(s) == b""
        assert time.monotonic() - start < KEEP_ALIVE_S + WAIT_S / 2


# Header count and size


@pytest.mark.parametrize(("count", "expected"), [(100, 200), (101, 431)])
def test_header_count(server: RunningServer, count: int, expected: int) -> None:
    # Host, Content-Type and Content-Length are three of them.
    extra = [b"X-H%d: v" % i for i in range(count - 3)]
    with _connect(server) as s:
        s.sendall(_post(_infer_body(), *extra))
        status, body = _response(s)
    assert status == expected, body[:300]
    if expected == 431:
        assert b"http.max_header_count" in body


@pytest.mark.parametrize(("size", "expected"), [(60 * 1024, 200), (70 * 1024, 431)])
def test_header_size(server: RunningServer, size: int, expected: int) -> None:
    with _connect(server) as s:
        s.sendall(_post(_infer_body(), b"X-Big: " + b"a" * size))
        status, body = _response(s)
    assert status == expected, body[:300]
    if expected == 431:
        assert b"http.max_header_bytes" in body


def test_a_huge_header_is_refused_before_it_is_read(server: RunningServer) -> None:
    # 32 MiB in one header value: the server stops reading (and closes) long before the end,
    # so the upload fails; a server that read it all would leave sendall to finish.
    with _connect(server) as s, pytest.raises(OSError):
        s.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-Big: ")
        for _ in range(32):
            s.sendall(b"a" * (1 << 20))


# Wire chunks


def _chunked(body: bytes, pieces: int) -> bytes:
    step, extra = divmod(len(body), pieces)
    out = [
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    ]
    i = 0
    for n in range(pieces):
        size = step + (1 if n < extra else 0)
        out += [b"%x\r\n" % size, body[i : i + size], b"\r\n"]
        i += size
    return b"".join([*out, b"0\r\n\r\n"])


@pytest.mark.parametrize(("pieces", "expected"), [(MAX_CHUNKS, 200), (MAX_CHUNKS + 1, 400)])
def test_chunk_count_is_counted_on_the_wire(
    server: RunningServer, pieces: int, expected: int
) -> None:
    # Sent in one write, so the server reads all chunks at once (one ASGI message).
    with _connect(server) as s:
        s.sendall(_chunked(_infer_body(200), pieces))
        status, body = _response(s)
    assert status == expected, body[:300]
    if expected == 400:
        assert b"http.max_chunks" in body


# Connections per client address


def test_connections_over_the_per_client_cap_are_closed(server: RunningServer) -> None:
    # A source address of its own, so that connections of other tests do not count.
    source = "127.0.0.3"
    first = [_connect(server, source) for _ in range(PER_CLIENT)]
    try:
        for s in first:
            s.sendall(GET)
            assert _response(s)[0] == 200
        with _connect(server, source) as extra:
            try:
                extra.sendall(GET)
            except OSError:
                pass
            assert _read_until_closed(extra) == b""  # closed without an answer
        with _connect(server, "127.0.0.4") as other:  # another address is not affected
            other.sendall(GET)
            assert _response(other)[0] == 200
        for s in first:  # the first ones still work
            s.sendall(GET)
            assert _response(s)[0] == 200
        first.pop().close()
        deadline = time.monotonic() + WAIT_S
        while True:  # the freed slot is reused once the server has seen the close
            with _connect(server, source) as again:
                try:
                    again.sendall(GET)
                    if _response(again)[0] == 200:
                        break
                except (OSError, AssertionError):
                    pass
            assert time.monotonic() < deadline, "the closed connection's slot was not freed"
            time.sleep(0.05)
    finally:
        for s in first:
            s.close()


def test_websocket_upgrades_give_their_slot_back(server: RunningServer) -> None:
    # An upgraded connection is served by the WebSocket protocol, which must free the slot
    # when it closes (once): after twice the cap of refused handshakes, the cap of plain
    # connections fits, and one more does not.
    source = "127.0.0.5"
    url = f"ws://127.0.0.1:{server.port}/no/such/socket"
    for _ in range(2 * PER_CLIENT):
        with pytest.raises(InvalidHandshake):
            ws_connect(url, source_address=(source, 0), open_timeout=WAIT_S).close()
    deadline = time.monotonic() + WAIT_S
    while True:
        conns = [_connect(server, source) for _ in range(PER_CLIENT)]
        try:
            for s in conns:
                s.sendall(GET)
                assert _response(s)[0] == 200
            break
        except (OSError, AssertionError):
            for s in conns:
                s.close()
            assert time.monotonic() < deadline, "WebSocket connections kept their slots"
            time.sleep(0.05)
    try:
        with _connect(server, source) as extra:
            try:
                extra.sendall(GET)
            except OSError:
                pass
            assert _read_until_closed(extra) == b""
    finally:
        for s in conns:
            s.close()
