"""tritonclient.grpc (and the kserve SDK's gRPC client) against a running `inferd serve`."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN_GRPC, free_port
from tests.e2e.conftest import Process


@pytest.fixture()
def client(inferd_server: Process) -> grpcclient.InferenceServerClient:
    assert inferd_server.grpc_host_port
    return grpcclient.InferenceServerClient(inferd_server.grpc_host_port)


def simple_inputs() -> tuple[list[grpcclient.InferInput], np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def status(err: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(err.value.status())


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("no_such_model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "inferd" and "statistics" in server["extensions"]
    meta = client.get_model_metadata("simple")
    assert meta.name == "simple" and [i.name for i in meta.inputs] == ["INPUT0", "INPUT1"]
    assert list(meta.inputs[0].shape) == [-1, 16] and meta.versions == ["1"]
    config = client.get_model_config("simple").config
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [16]
    assert client.get_model_config("simple", as_json=True)["config"]["name"] == "simple"


def test_simple_infer(client: grpcclient.InferenceServerClient) -> None:
    inputs, a, b = simple_inputs()
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", inputs, outputs=outputs, request_id="r1", client_timeout=30)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None and result.get_response().id == "r1"
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_bytes_simple_string(client: grpcclient.InferenceServerClient) -> None:
    a = np.array([[str(i) for i in range(16)]], dtype=object)
    b = np.array([["7"] * 16], dtype=object)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
              grpcclient.InferInput("INPUT1", [1, 16], "BYTES")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple_string", inputs)
    assert [int(x) for x in result.as_numpy("OUTPUT0").ravel()] == [i + 7 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1").ravel()] == [i - 7 for i in range(16)]


def identity_inputs(x16: np.ndarray, x32: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [grpcclient.InferInput("IN16", list(x16.shape), "FP16"),
              grpcclient.InferInput("IN32", list(x32.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(x16)
    inputs[1].set_data_from_numpy(x32)
    return inputs


def test_fp16(client: grpcclient.InferenceServerClient) -> None:
    x16 = np.array([[0.5, -1.5, 65504.0]], dtype=np.float16)
    x32 = np.array([[1.25, 2.5, 3.75]], dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput("OUT16")]
    out = client.infer("identity_fp16", identity_inputs(x16, x32), outputs=outputs)
    assert out.as_numpy("OUT16").dtype == np.float16
    np.testing.assert_array_equal(out.as_numpy("OUT16"), x16)


def test_big_tensors_round_trip(client: grpcclient.InferenceServerClient) -> None:
    """Above grpcio's 4 MiB default in both directions."""
    n = 3 * 1024 * 1024  # 6 MiB of FP16 and 12 MiB of FP32
    x16 = np.random.default_rng(0).random((1, n)).astype(np.float16)
    x32 = np.arange(n, dtype=np.float32).reshape(1, n)
    out = client.infer("identity_fp16", identity_inputs(x16, x32), client_timeout=60)
    np.testing.assert_array_equal(out.as_numpy("OUT16"), x16)
    np.testing.assert_array_equal(out.as_numpy("OUT32"), x32)


def test_classification(client: grpcclient.InferenceServerClient) -> None:
    inp = grpcclient.InferInput("input", [2, 4], "FP32")
    inp.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32))
    out = [grpcclient.InferRequestedOutput("predict_proba", class_count=1)]
    top = client.infer("iris_sklearn", [inp], outputs=out).as_numpy("predict_proba")
    assert [x.decode().split(":", 1)[1] for x in top.ravel()] == ["0:setosa", "2:virginica"]


def test_errors(client: grpcclient.InferenceServerClient) -> None:
    inputs, _, _ = simple_inputs()
    with pytest.raises(InferenceServerException) as err:
        client.infer("no_such_model", inputs)
    assert err.value.message().startswith("Request for unknown model")
    assert status(err) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple", inputs[:1])
    assert status(err) == "StatusCode.INVALID_ARGUMENT" and "INPUT1" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.get_system_shared_memory_status()
    assert status(err) == "StatusCode.UNIMPLEMENTED"


def test_stream_error_in_the_middle(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs, a, b = simple_inputs()
    try:
        client.async_stream_infer("simple", inputs, request_id="1")
        client.async_stream_infer("no_such_model", inputs, request_id="2")
        client.async_stream_infer("simple", inputs[:1], request_id="3")
        for i in range(4, 10):
            client.async_stream_infer("simple", inputs, request_id=str(i))
        got = [results.get(timeout=30) for _ in range(9)]
    finally:
        client.stop_stream()
    errors = sorted(str(e.message()) for r, e in got if e is not None)
    assert len(errors) == 2 and errors[0].startswith("Request for unknown model")
    assert "INPUT1" in errors[1]
    ok = {r.get_response().id: r for r, e in got if e is None}
    assert set(ok) == {"1", *(str(i) for i in range(4, 10))}
    np.testing.assert_array_equal(ok["9"].as_numpy("OUTPUT0"), a + b)


def test_statistics(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("simple").model_stats[0].inference_count
    inputs, _, _ = simple_inputs()
    client.infer("simple", inputs)
    stats = client.get_inference_statistics("simple", as_json=True)["model_stats"]
    assert len(stats) == 1 and int(stats[0]["inference_count"]) == before + 1
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    assert len(client.get_inference_statistics().model_stats) >= 7


def test_repository_control(client: grpcclient.InferenceServerClient) -> None:
    names = {m.name for m in client.get_model_repository_index().models}
    assert {"simple", "simple_string", "iris_onnx", "iris_xgboost"} <= names
    # unload first so each load is a fresh one (a reload waits for the old version to drain)
    client.unload_model("simple", headers=ADMIN_GRPC)
    assert not client.is_model_ready("simple")
    client.load_model("simple", config='{"max_batch_size": 16}', headers=ADMIN_GRPC)
    assert client.get_model_config("simple").config.max_batch_size == 16
    client.unload_model("simple", headers=ADMIN_GRPC)
    client.load_model("simple", headers=ADMIN_GRPC)
    assert client.get_model_config("simple").config.max_batch_size == 8
    with pytest.raises(InferenceServerException) as err:
        client.load_model("simple", config="{broken", headers=ADMIN_GRPC)
    assert status(err) == "StatusCode.INVALID_ARGUMENT" and "failed to load" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.load_model(
            "simple", config="{}", files={"file:1/model.onnx": b"onnx"}, headers=ADMIN_GRPC
        )
    assert status(err) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("no_such_model", headers=ADMIN_GRPC)
    assert status(err) == "StatusCode.NOT_FOUND" and "failed to load" in err.value.message()
    assert client.is_model_ready("simple")


def test_health_service_over_a_raw_channel(inferd_server: Process) -> None:
    assert inferd_server.grpc_host_port
    with grpc.insecure_channel(inferd_server.grpc_host_port) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=10) == b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def test_kserve_grpc_client(inferd_server: Process) -> None:
    script = Path(__file__).with_name("kserve_grpc_check.py")
    proc = subprocess.run([sys.executable, str(script), str(inferd_server.grpc_host_port)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"live": True, "ready": True, "model_ready": True,
                      "typed": [0, 2], "raw": [0, 2]}  # fmt: skip


def test_busy_grpc_port_fails_fast(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(tmp_path),
             "--http-port", str(free_port()), "--grpc-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode != 0
    assert f"gRPC cannot listen on 127.0.0.1:{port}" in proc.stderr
