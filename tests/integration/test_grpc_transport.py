"""Both gRPC transports on real sockets with real clients (grpcio's C core, tritonclient):
unary and stream infer, deadlines, compression, big messages, many calls on one connection,
message limits, graceful shutdown of running calls; and the native transport's timeouts against
raw slow sockets."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inferd import serve
from inferd.runner import RunningServer
from tests.integration.test_grpc import raw_input


class Slow:
    """Echoes its input after `sleep` seconds (a request parameter)."""

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, Any]:
        time.sleep(float(parameters.get("sleep", 0)))
        return {"OUT": inputs["IN"] * 2}


MODELS = {
    "double": {
        "model": Slow(),
        "inputs": [{"name": "IN", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [-1]}],
        "instances": 4,
    }
}


def start(transport: str, **grpc_settings: Any) -> RunningServer:
    running = serve(
        models=MODELS,
        http_port=0,
        block=False,
        grpc={"port": 0, "transport": transport, **grpc_settings},
        shutdown_grace_s=10,
        log_level="warning",
    )
    assert running is not None and running.grpc_port
    return running


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with start(request.param, max_message_bytes=1 << 20) as running:
        yield running


def request(values: np.ndarray, sleep: float = 0.0, rid: str = "") -> Any:
    req = pb.ModelInferRequest(model_name="double", id=rid)
    raw_input(req, "IN", values.astype(np.float32), "FP32")
    if sleep:
        req.parameters["sleep"].double_param = sleep
    return req


def answer(response: Any) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32)


def test_tritonclient_compressed_requests(server: RunningServer) -> None:
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    x = np.arange(1000, dtype=np.float32)
    for algorithm in (None, "gzip", "deflate"):
        inp = tc.InferInput("IN", [1000], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("double", [inp], compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUT"), x * 2)
    client.close()


def test_many_concurrent_calls_on_one_connection(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def one(i: int) -> bool:
            r = stub.ModelInfer(request(np.full(i + 1, i), rid=str(i)), timeout=30)
            return r.id == str(i) and bool((answer(r) == 2 * i).all()) and answer(r).size == i + 1

        with ThreadPoolExecutor(32) as pool:
            assert all(pool.map(one, range(200)))


def test_message_over_the_limit(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request(np.zeros(300_000)), timeout=30)  # 1.2 MB > 1 MiB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert answer(stub.ModelInfer(request(np.ones(3)), timeout=30)).tolist() == [2, 2, 2]


def test_metadata_reaches_the_servicer(server: RunningServer) -> None:
    """A forged key in metadata is refused: the credentials are read from the call."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(
                request(np.ones(2)), metadata=(("x-api-key", "inferd_nope_nope"),), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_shutdown_lets_running_calls_finish(transport: str) -> None:
    running = start(transport)
    port = running.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert answer(stub.ModelInfer(request(np.ones(1)), timeout=30)).tolist() == [2]
        slow = stub.ModelInfer.future(request(np.ones(4), sleep=1.0), timeout=30)
        time.sleep(0.3)
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        assert answer(slow.result(timeout=30)).tolist() == [2, 2, 2, 2]  # finished, not cut
        stopper.join(30)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request(np.ones(1)), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # nobody listens any more


def test_health_service(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=10) == b"\x08\x01"  # SERVING
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        stream = watch(b"", timeout=10)
        assert next(stream) == b"\x08\x01"
        stream.cancel()
        with pytest.raises(grpc.RpcError) as err:
            check(b"\x0a\x04nope", timeout=10)  # service "nope"
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_compressed_request_inflating_past_the_limit(server: RunningServer) -> None:
    """8 MiB of zeros travel as a few KiB of gzip; the 1 MiB limit holds after decompression."""
    with grpc.insecure_channel(
        f"127.0.0.1:{server.grpc_port}", compression=grpc.Compression.Gzip
    ) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request(np.zeros(2_000_000)), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert answer(stub.ModelInfer(request(np.ones(3)), timeout=30)).tolist() == [2, 2, 2]


def test_tritonclient_stream_infer(server: RunningServer) -> None:
    """ModelStreamInfer: several requests on one stream, answered in band, in order."""
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    for i in range(5):
        inp = tc.InferInput("IN", [3], "FP32")
        inp.set_data_from_numpy(np.full(3, i, dtype=np.float32))
        client.async_stream_infer("double", [inp], request_id=str(i))
    got = [results.get(timeout=30) for _ in range(5)]
    client.stop_stream()
    client.close()
    assert [error for _, error in got] == [None] * 5
    assert [r.get_response().id for r, _ in got] == [str(i) for i in range(5)]
    assert [r.as_numpy("OUT").tolist() for r, _ in got] == [[2.0 * i] * 3 for i in range(5)]


def test_tritonclient_deadline(server: RunningServer) -> None:
    """A call past its deadline ends with DEADLINE_EXCEEDED; the connection goes on."""
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = tc.InferInput("IN", [2], "FP32")
    inp.set_data_from_numpy(np.ones(2, dtype=np.float32))
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer("double", [inp], parameters={"sleep": 1.5}, client_timeout=0.2)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.infer("double", [inp]).as_numpy("OUT").tolist() == [2, 2]
    client.close()


def test_big_messages_both_ways(server: RunningServer) -> None:
    """Requests and answers just under the 1 MiB limit cross many frames, and answers more
    than a client's initial 64 KiB window (they wait for its WINDOW_UPDATEs)."""
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    x = np.arange(250_000, dtype=np.float32)  # 1,000,000 bytes each way
    inp = tc.InferInput("IN", [x.size], "FP32")
    inp.set_data_from_numpy(x)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.infer("double", [inp]), range(8)))
    for result in answers:
        np.testing.assert_array_equal(result.as_numpy("OUT"), x * 2)
    client.close()


# ---- slow clients (native transport) -------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\0\0\0\x04\0\0\0\0\0"  # an empty SETTINGS frame
GOAWAY, PING = 7, 6


def frames_until_closed(
    sock: socket.socket, limit_s: float
) -> tuple[list[tuple[int, bytes]], float]:
    """Read until the server closes the socket: the frames (type, payload), how long it took."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    elapsed = time.monotonic() - start
    out, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out, elapsed


@pytest.fixture(scope="module")
def strict() -> Iterator[RunningServer]:
    """A native server with short timeouts (and its keepalive off, to see each on its own)."""
    with start("native", read_timeout_s=0.5, idle_timeout_s=1.5, keepalive_interval_s=0) as s:
        yield s


def test_half_a_frame_is_cut_at_the_read_deadline(strict: RunningServer) -> None:
    socks = []
    for _ in range(20):  # a few slowloris connections at once
        sock = socket.create_connection(("127.0.0.1", strict.grpc_port))
        sock.sendall(PREFACE + SETTINGS + b"\0\0\x08\x06")  # half a PING frame header
        socks.append(sock)
    for sock in socks:
        frames, elapsed = frames_until_closed(sock, 10)
        sock.close()
        assert elapsed < 3  # 0.5 s, checked every 0.125 s (the idle timeout is longer)
        goaway = [p for t, p in frames if t == GOAWAY]
        assert goaway and goaway[0][8:].startswith(b"read timeout")


def test_a_connection_that_never_sends_its_preface_is_cut(strict: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", strict.grpc_port)) as sock:
        sock.sendall(PREFACE[:10])
        _frames, elapsed = frames_until_closed(sock, 10)
    assert elapsed < 3


def test_an_idle_connection_is_closed(strict: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", strict.grpc_port)) as sock:
        sock.sendall(PREFACE + SETTINGS)
        frames, elapsed = frames_until_closed(sock, 10)
    assert 1.4 < elapsed < 5
    goaway = [p for t, p in frames if t == GOAWAY]
    assert goaway and struct.unpack(">L", goaway[0][4:8])[0] == 0  # NO_ERROR


def test_clients_reconnect_after_an_idle_close(strict: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{strict.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert answer(stub.ModelInfer(request(np.ones(2)), timeout=30)).tolist() == [2, 2]
        time.sleep(2.2)  # the server closed the idle connection meanwhile
        assert answer(stub.ModelInfer(request(np.ones(2)), timeout=30)).tolist() == [2, 2]
        # a call that lasts longer than the idle timeout is not cut
        slow = stub.ModelInfer(request(np.ones(1), sleep=2.0), timeout=30)
        assert answer(slow).tolist() == [2]


@pytest.fixture(scope="module")
def pinging() -> Iterator[RunningServer]:
    with start("native", keepalive_interval_s=0.2, keepalive_timeout_s=1.0, idle_timeout_s=0) as s:
        yield s


def test_an_unanswered_keepalive_ping_closes_the_connection(pinging: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", pinging.grpc_port)) as sock:
        sock.sendall(PREFACE + SETTINGS)  # and then never a byte more, PING ACKs included
        frames, elapsed = frames_until_closed(sock, 10)
    assert elapsed < 5  # 0.2 s silent, then 1 s for the answer
    assert any(t == PING for t, _ in frames)
    goaway = [p for t, p in frames if t == GOAWAY]
    assert goaway and goaway[0][8:].startswith(b"keepalive timeout")


def test_real_clients_answer_keepalive_pings(pinging: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{pinging.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        slow = stub.ModelInfer(request(np.ones(3), sleep=1.5), timeout=30)  # pinged meanwhile
        assert answer(slow).tolist() == [2, 2, 2]
    client = tc.InferenceServerClient(f"127.0.0.1:{pinging.grpc_port}")
    inp = tc.InferInput("IN", [4], "FP32")
    inp.set_data_from_numpy(np.ones(4, dtype=np.float32))
    for _ in range(3):
        assert client.infer("double", [inp]).as_numpy("OUT").tolist() == [2, 2, 2, 2]
        time.sleep(0.5)  # silent for longer than the keepalive interval
    client.close()


def test_connections_per_client_address_are_capped() -> None:
    """Over `max_connections_per_client`, a new connection from the same address is closed
    before a byte is sent; the open ones keep working and a freed slot is taken again."""
    with start("native", max_connections_per_client=2) as s:
        first = [socket.create_connection(("127.0.0.1", s.grpc_port)) for _ in range(2)]
        for sock in first:
            sock.sendall(PREFACE + SETTINGS)
            sock.settimeout(5)
            assert sock.recv(9)[3] == 4  # the server's SETTINGS: admitted
        extra = socket.create_connection(("127.0.0.1", s.grpc_port))
        frames, elapsed = frames_until_closed(extra, 5)
        extra.close()
        assert frames == [] and elapsed < 3
        first.pop().close()
        time.sleep(0.2)  # the server sees the close
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert answer(stub.ModelInfer(request(np.ones(2)), timeout=30)).tolist() == [2, 2]
        for sock in first:
            sock.close()
