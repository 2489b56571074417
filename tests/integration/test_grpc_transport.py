"""Both gRPC transports on real sockets with real clients (grpcio's C core, tritonclient):
compression, many calls on one connection, message limits, graceful shutdown of running calls."""

from __future__ import annotations

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
