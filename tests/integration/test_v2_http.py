"""V2 REST over a real socket: health, metadata, infer (JSON, binary, raw, gzip), repository."""

from __future__ import annotations

import gzip
import logging
import struct
import zlib

import httpx
import numpy as np
import orjson
import pytest

from inferd.core.datatypes import NUMPY_DTYPES
from tests.conftest import ADMIN

SIMPLE_A = list(range(16))
SIMPLE_B = [1] * 16


def simple_body(**extra: object) -> dict:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [SIMPLE_A]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": SIMPLE_B},
        ],
        **extra,
    }


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "inferd"
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_repository" in meta["extensions"]


def test_model_metadata_with_and_without_version(client: httpx.Client) -> None:
    for path in ("/v2/models/simple", "/v2/models/simple/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == "simple" and meta["versions"] == ["1"]
        assert meta["platform"] == "onnx_onnxv1"
        assert meta["inputs"] == [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ]
    # shapes of an ONNX model come from the file itself
    iris = client.get("/v2/models/iris_onnx").json()
    assert iris["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]


def test_model_ready_and_unknown_version(client: httpx.Client) -> None:
    assert client.get("/v2/models/simple/ready").json()["ready"] is True
    assert client.get("/v2/models/simple/versions/1/ready").status_code == 200
    r = client.get("/v2/models/simple/versions/7/ready")
    assert r.status_code == 404 and "Request for unknown model" in r.json()["error"]


def test_infer_nested_and_flat_with_id_echo(client: httpx.Client) -> None:
    r = client.post("/v2/models/simple/infer", json=simple_body(id="req-42"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-42" and doc["model_name"] == "simple" and doc["model_version"] == "1"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["OUTPUT0"]["data"] == [a + b for a, b in zip(SIMPLE_A, SIMPLE_B, strict=True)]
    assert out["OUTPUT1"]["data"] == [a - b for a, b in zip(SIMPLE_A, SIMPLE_B, strict=True)]
    assert out["OUTPUT0"]["shape"] == [1, 16] and out["OUTPUT0"]["datatype"] == "INT32"
    r2 = client.post("/v2/models/simple/versions/1/infer", json=simple_body())
    assert r2.status_code == 200 and "id" not in r2.json()


def test_output_selection(client: httpx.Client) -> None:
    r = client.post("/v2/models/simple/infer", json=simple_body(outputs=[{"name": "OUTPUT1"}]))
    assert [o["name"] for o in r.json()["outputs"]] == ["OUTPUT1"]


def _identity(client: httpx.Client, datatype: str, data: list, shape: list[int]) -> dict:
    body = {"inputs": [{"name": "IN", "datatype": datatype, "shape": shape, "data": data}]}
    r = client.post(f"/v2/models/identity_{datatype.lower()}/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()["outputs"][0]


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("BOOL", [[True, False, True]]),
        ("UINT8", [[0, 7, 255]]),
        ("UINT16", [[0, 7, 65535]]),
        ("UINT32", [[0, 7, 2**32 - 1]]),
        ("UINT64", [[0, 7, 2**64 - 1]]),
        ("INT8", [[-128, 0, 127]]),
        ("INT16", [[-32768, 0, 32767]]),
        ("INT32", [[-(2**31), 0, 2**31 - 1]]),
        ("INT64", [[-(2**63), 0, 2**63 - 1]]),
        ("FP16", [[0.5, -1.25, 2048.0]]),
        ("FP32", [[0.5, -1.25, 3.0e38]]),
        ("FP64", [[0.1, -1.25, 1e300]]),
        ("BYTES", [["a", "héllo", ""]]),
    ],
)
def test_every_datatype_json_round_trip(client: httpx.Client, datatype: str, data: list) -> None:
    out = _identity(client, datatype, data, [1, 3])
    assert out["datatype"] == datatype and out["shape"] == [1, 3]
    assert out["data"] == data[0]


def _binary_request(client: httpx.Client, model: str, header: dict, blobs: list[bytes],
                    headers: dict | None = None) -> httpx.Response:  # fmt: skip
    head = orjson.dumps(header)
    return client.post(
        f"/v2/models/{model}/infer",
        content=head + b"".join(blobs),
        headers={"Inference-Header-Content-Length": str(len(head)), **(headers or {})},
    )


def _parse_binary(r: httpx.Response) -> tuple[dict, bytes]:
    n = int(r.headers["Inference-Header-Content-Length"])
    return orjson.loads(r.content[:n]), r.content[n:]


@pytest.mark.parametrize("datatype", sorted(set(NUMPY_DTYPES) - {"BYTES"}))
def test_every_datatype_binary_round_trip(client: httpx.Client, datatype: str) -> None:
    arr = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6)
    arr = arr.astype(NUMPY_DTYPES[datatype]).reshape(2, 3)
    blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    header = {
        "inputs": [{"name": "IN", "datatype": datatype, "shape": [2, 3],
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "OUT", "parameters": {"binary_data": True}}],
    }  # fmt: skip
    r = _binary_request(client, f"identity_{datatype.lower()}", header, [blob])
    assert r.status_code == 200, r.text
    doc, rest = _parse_binary(r)
    out = doc["outputs"][0]
    assert out["parameters"]["binary_data_size"] == len(blob) and rest == blob
    assert out["shape"] == [2, 3] and "data" not in out


def test_bytes_binary_round_trip(client: httpx.Client) -> None:
    items = [b"abc", b"", b"\x00\xffbinary"]
    blob = b"".join(struct.pack("<I", len(x)) + x for x in items)
    header = {
        "inputs": [{"name": "IN", "datatype": "BYTES", "shape": [1, 3],
                    "parameters": {"binary_data_size": len(blob)}}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    r = _binary_request(client, "identity_bytes", header, [blob])
    doc, rest = _parse_binary(r)
    assert rest == blob and doc["outputs"][0]["datatype"] == "BYTES"


def test_mixed_json_and_binary_inputs(client: httpx.Client) -> None:
    b = np.ones((1, 16), dtype="<i4")
    header = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": SIMPLE_A},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16],
             "parameters": {"binary_data_size": b.nbytes}},
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}],
    }  # fmt: skip
    r = _binary_request(client, "simple", header, [b.tobytes()])
    doc, rest = _parse_binary(r)
    np.testing.assert_array_equal(np.frombuffer(rest, "<i4"), np.array(SIMPLE_A) + 1)
    assert doc["outputs"][1]["data"] == [a - 1 for a in SIMPLE_A]


def test_raw_single_input_body(client: httpx.Client) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype="<f4")
    r = client.post(
        "/v2/models/iris_sklearn/infer",
        content=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert r.status_code == 200, r.text
    doc, rest = _parse_binary(r)
    outs = {o["name"]: o for o in doc["outputs"]}
    n = outs["predict"]["parameters"]["binary_data_size"]
    assert np.frombuffer(rest[:n], "<i8").tolist() == [0, 2]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_and_response(client: httpx.Client, encoding: str) -> None:
    raw = orjson.dumps(simple_body())
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    r = client.post(
        "/v2/models/simple/infer",
        content=body,
        headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"][:3] == [1, 2, 3]
    big = {"inputs": [{"name": "IN", "datatype": "FP64", "shape": [1, 2000],
                       "data": [float(i) for i in range(2000)]}]}  # fmt: skip
    r = client.post("/v2/models/identity_fp64/infer", json=big,
                    headers={"Accept-Encoding": encoding})  # fmt: skip
    assert r.headers.get("content-encoding") == encoding
    assert r.json()["outputs"][0]["data"][1999] == 1999.0  # httpx decompressed it


def test_classification_extension(client: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}
        ],
        "outputs": [{"name": "predict_proba", "parameters": {"classification": 2}}],
    }
    out = client.post("/v2/models/iris_sklearn/infer", json=body).json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    score, index, label = out["data"][0].split(":")
    assert index == "2" and label == "virginica" and float(score) > 0.5


def test_model_output_nan_is_valid_json(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}],
            "parameters": {"nan": True}}  # fmt: skip
    r = client.post("/v2/models/raiser/infer", json=body)
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"] == [None, 4.0, None]


def test_config_stats_and_model_list(client: httpx.Client) -> None:
    cfg = client.get("/v2/models/simple/config").json()
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0] == {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16],
                               "optional": False}  # fmt: skip
    before = client.get("/v2/models/simple/stats").json()["model_stats"][0]
    client.post("/v2/models/simple/infer", json=simple_body())
    after = client.get("/v2/models/simple/versions/1/stats").json()["model_stats"]
    assert len(after) == 1
    assert after[0]["inference_count"] == before["inference_count"] + 1
    assert after[0]["inference_stats"]["success"]["count"] >= 1
    every = client.get("/v2/models/stats").json()["model_stats"]
    assert {"simple", "iris_onnx"} <= {s["name"] for s in every}
    assert "simple" in client.get("/v2/models").json()["models"]


def test_repository_index_unload_load(client: httpx.Client) -> None:
    index = client.post("/v2/repository/index", json={}).json()
    states = {m["name"]: m for m in index}
    assert states["simple"]["state"] == "READY"
    assert states["broken"]["state"] == "UNAVAILABLE" and states["broken"]["reason"]
    ready_only = client.post("/v2/repository/index", json={"ready": True}).json()
    assert "broken" not in {m["name"] for m in ready_only}

    assert client.post("/v2/repository/models/iris_onnx/unload", headers=ADMIN).status_code == 200
    r = client.post("/v2/models/iris_onnx/infer", json={"inputs": []})
    assert r.status_code == 503
    assert client.get("/v2/models/iris_onnx/ready").status_code == 503
    assert (
        client.post("/v2/repository/models/iris_onnx/load", json={}, headers=ADMIN).status_code
        == 200
    )
    assert client.get("/v2/models/iris_onnx/ready").status_code == 200
    r = client.post("/v2/repository/models/broken/load", headers=ADMIN)
    assert r.status_code == 400 and "broken" in r.json()["error"]
    assert client.post("/v2/repository/models/nope/load", headers=ADMIN).status_code == 404


def test_kserve_v1(client: httpx.Client) -> None:
    assert "iris_sklearn" in client.get("/v1/models").json()["models"]
    doc = client.get("/v1/models/iris_sklearn").json()
    assert {k: doc[k] for k in ("name", "version", "ready")} == {
        "name": "iris_sklearn", "version": "1", "ready": True}  # fmt: skip
    assert doc["id"] == "iris_sklearn" and doc["object"] == "model"  # OpenAI's reading
    r = client.post("/v1/models/iris_sklearn:predict",
                    json={"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})  # fmt: skip
    assert r.status_code == 200 and r.json() == {"predictions": [0, 2]}
    r = client.post(
        "/v1/models/iris_sklearn:predict", json={"inputs": {"input": [[5.1, 3.5, 1.4, 0.2]]}}
    )
    assert r.json() == {"predictions": [0]}
    assert client.get("/").json() == {"status": "alive"}


def test_metrics_and_access_log(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inferd.access"):
        client.post("/v2/models/simple/infer", json=simple_body(id="log-me"))
        client.post("/v2/models/simple/infer", json={"inputs": "nope"})
        wrong = simple_body()
        wrong["inputs"][0]["datatype"] = "FP32"
        client.post("/v2/models/simple/infer", json=wrong)
    lines = [r.__dict__["fields"] for r in caplog.records if r.name == "inferd.access"]
    ok = next(f for f in lines if f["request_id"] == "log-me")
    assert ok["model"] == "simple" and ok["status"] == 200 and ok["latency_ms"] > 0
    assert any(f["status"] == 400 and f["model"] == "simple" for f in lines)

    text = client.get("/metrics").text
    assert 'inferd_inference_requests_total{model="simple",version="1"}' in text
    failures = [
        line for line in text.splitlines()
        if line.startswith("inferd_inference_failures_total{") and 'model="simple"' in line
    ]  # fmt: skip
    assert any(
        'reason="invalid_input"' in line and float(line.split()[-1]) >= 2 for line in failures
    )
    for name in (
        "inferd_inference_request_duration_seconds_bucket",
        "inferd_inference_queue_duration_seconds_bucket",
        "inferd_inference_compute_duration_seconds_bucket",
        "inferd_inference_count_total",
        "inferd_inference_executions_total",
    ):
        assert f"{name}{{" in text, name
