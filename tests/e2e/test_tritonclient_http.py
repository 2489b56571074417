"""tritonclient.http against a running `inferd serve`: the third-party client is the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN
from tests.e2e.conftest import Process


@pytest.fixture()
def client(inferd_server: Process) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(inferd_server.host_port)


def _simple_inputs(binary: tuple[bool, bool]) -> tuple[list, np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"),
              httpclient.InferInput("INPUT1", [1, 16], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a, binary_data=binary[0])
    inputs[1].set_data_from_numpy(b, binary_data=binary[1])
    return inputs, a, b


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    meta = client.get_model_metadata("simple")
    assert meta["name"] == "simple" and [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert client.get_server_metadata()["name"] == "inferd"
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [16]


@pytest.mark.parametrize("binary", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("binary_out", [False, True])
def test_simple_json_and_binary(
    client: httpclient.InferenceServerClient, binary: tuple[bool, bool], binary_out: bool
) -> None:
    inputs, a, b = _simple_inputs(binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=not binary_out)]  # fmt: skip
    result = client.infer("simple", inputs, outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r1"


def test_outputs_none_returns_all_binary(client: httpclient.InferenceServerClient) -> None:
    inputs, a, b = _simple_inputs((True, True))
    result = client.infer("simple", inputs, outputs=None)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    outs = result.get_response()["outputs"]
    assert all("binary_data_size" in o["parameters"] for o in outs)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression_both_ways(client: httpclient.InferenceServerClient, algorithm: str) -> None:
    inputs, a, b = _simple_inputs((True, False))
    result = client.infer("simple", inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_simple_string(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = np.array([[str(i) for i in range(16)]], dtype=object)
    b = np.array([["7"] * 16], dtype=object)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
              httpclient.InferInput("INPUT1", [1, 16], "BYTES")]  # fmt: skip
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]  # fmt: skip
    result = client.infer("simple_string", inputs, outputs=outputs)
    got = [int(x) for x in result.as_numpy("OUTPUT0").ravel()]
    assert got == [i + 7 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1").ravel()] == [i - 7 for i in range(16)]


@pytest.mark.parametrize("binary", [False, True])
def test_fp16(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x16 = np.array([[0.5, -1.5, 65504.0]], dtype=np.float16)
    x32 = np.array([[1.25, 2.5, 3.75]], dtype=np.float32)
    inputs = [httpclient.InferInput("IN16", [1, 3], "FP16"),
              httpclient.InferInput("IN32", [1, 3], "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(x16, binary_data=binary)
    inputs[1].set_data_from_numpy(x32, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUT16", binary_data=binary)]
    result = client.infer("identity_fp16", inputs, outputs=outputs)
    out = result.as_numpy("OUT16")
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, x16)
    assert result.as_numpy("OUT32") is None  # only the requested output came back


def test_iris_models_agree(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)
    labels = {}
    for model, output in [("iris_onnx", "label"), ("iris_sklearn", "predict")]:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        labels[model] = client.infer(model, [inp]).as_numpy(output).tolist()
    assert labels["iris_onnx"] == labels["iris_sklearn"] == [0, 2, 1]


def test_unknown_model(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = _simple_inputs((True, True))
    with pytest.raises(InferenceServerException) as err:
        client.infer("no_such_model", inputs)
    assert err.value.message().startswith("Request for unknown model")
    assert not client.is_model_ready("no_such_model")


def test_bad_input_reaches_client_as_400(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    inp.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple", [inp])
    assert err.value.status() == "400" and "INPUT1" in err.value.message()


def test_statistics(client: httpclient.InferenceServerClient) -> None:
    inputs, _, _ = _simple_inputs((True, True))
    before = client.get_inference_statistics("simple")["model_stats"][0]["inference_count"]
    client.infer("simple", inputs)
    stats = client.get_inference_statistics("simple")
    assert len(stats["model_stats"]) == 1
    s = stats["model_stats"][0]
    assert s["inference_count"] == before + 1 and s["inference_stats"]["success"]["count"] >= 1


def test_repository_control(client: httpclient.InferenceServerClient) -> None:
    names = {m["name"] for m in client.get_model_repository_index()}
    assert {"simple", "simple_string", "iris_onnx", "mlp_torch", "iris_xgboost"} <= names
    client.unload_model("iris_lightgbm", headers=ADMIN)
    assert not client.is_model_ready("iris_lightgbm")
    client.load_model("iris_lightgbm", headers=ADMIN)
    assert client.is_model_ready("iris_lightgbm")


def test_load_with_config_override(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.load_model(
            "simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}', headers=ADMIN
        )
    assert "failed to load" in err.value.message()
    assert client.is_model_ready("simple")  # a refused override leaves the model serving
    client.load_model("simple", config='{"max_batch_size":"16"}', headers=ADMIN)
    assert client.get_model_config("simple")["max_batch_size"] == 16
    client.load_model("simple", headers=ADMIN)  # without an override the repository config applies
    assert client.get_model_config("simple")["max_batch_size"] == 8
    with pytest.raises(InferenceServerException) as err:
        client.load_model("wrong_model_name", headers=ADMIN)
    assert "failed to load" in err.value.message()
    assert len(client.get_model_repository_index()) >= 7


def test_cli_refuses_bad_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(tmp_path),
         "--http-port", "70000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "port" in proc.stderr and "Traceback" not in proc.stderr
