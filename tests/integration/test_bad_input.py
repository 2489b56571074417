"""Every malformed request gets a 4xx `{"error": ...}` naming the problem; the server stays up."""

from __future__ import annotations

import gzip
import zlib

import httpx
import orjson
import pytest

from tests.conftest import ADMIN
from tests.integration.test_v2_http import simple_body


def _infer(
    client: httpx.Client, body: object, model: str = "simple", **kw: object
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(f"/v2/models/{model}/infer", content=content, **kw)  # type: ignore[arg-type]


def _error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    msg = r.json()["error"]
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.fixture(autouse=True)
def _server_stays_up(client: httpx.Client):  # type: ignore[no-untyped-def]
    yield
    r = client.post("/v2/models/simple/infer", json=simple_body())
    assert r.status_code == 200, "server must keep serving after a bad request"


def test_malformed_json(client: httpx.Client) -> None:
    _error(_infer(client, b'{"inputs": [}'), 400, "malformed JSON")


def test_body_not_an_object(client: httpx.Client) -> None:
    _error(_infer(client, [1, 2]), 400, "JSON object")


def test_missing_inputs_list(client: httpx.Client) -> None:
    _error(_infer(client, {"inputs": []}), 400, "'inputs'")


def test_wrong_datatype_for_model(client: httpx.Client) -> None:
    body = simple_body()
    body["inputs"][0]["datatype"] = "FP32"
    _error(_infer(client, body), 400, "INPUT0", "FP32", "INT32")


def test_unknown_datatype(client: httpx.Client) -> None:
    body = simple_body()
    body["inputs"][0]["datatype"] = "FLOAT"
    _error(_infer(client, body), 400, "INPUT0", "datatype")


@pytest.mark.parametrize(
    ("data", "needle"),
    [(["1"] * 16, "strings"), ([True] * 16, "booleans"), ([1.5] * 16, "floating"),
     ([2**40] * 16, "out of range"), ([None] * 16, "INT32")],
)  # fmt: skip
def test_values_of_the_wrong_type(client: httpx.Client, data: list, needle: str) -> None:
    body = simple_body()
    body["inputs"][0]["data"] = data
    _error(_infer(client, body), 400, "INPUT0", needle)


def test_fp32_value_out_of_range(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1e300]}]}
    _error(_infer(client, body, "raiser"), 400, "out of range")


def test_bytes_into_numeric_and_numbers_into_bytes(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "IN", "datatype": "BYTES", "shape": [1, 2], "data": [1, 2]}]}
    _error(_infer(client, body, "identity_bytes"), 400, "strings")


@pytest.mark.parametrize("count", [15, 17])
def test_data_count_differs_from_shape(client: httpx.Client, count: int) -> None:
    body = simple_body()
    body["inputs"][1]["data"] = [1] * count
    _error(_infer(client, body), 400, "INPUT1", "expects 16", f"got {count}")


def test_negative_dimension(client: httpx.Client) -> None:
    body = simple_body()
    body["inputs"][0]["shape"] = [2, -8]
    _error(_infer(client, body), 400, "negative")


@pytest.mark.parametrize("shape", [[16, 2**60 + 2], [1000000000], [2**63, 2**63]])
def test_overflowing_shape_refused_before_allocating(client: httpx.Client, shape: list) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": shape, "data": [1.0]}]}
    _error(_infer(client, body, "raiser"), 400, "X")
    blob = b"\0" * 4
    head = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": shape,
                                     "parameters": {"binary_data_size": 4}}]})  # fmt: skip
    r = client.post("/v2/models/raiser/infer", content=head + blob,
                    headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    _error(r, 400, "byte size mismatch")


def test_shape_not_matching_model(client: httpx.Client) -> None:
    body = simple_body()
    for i in body["inputs"]:
        i["shape"] = [2, 8]
    _error(_infer(client, body), 400, "INPUT0", "Expected [-1,16]")


def test_batch_over_max_batch_size(client: httpx.Client) -> None:
    body = simple_body()
    for i in body["inputs"]:
        i["shape"], i["data"] = [9, 16], [0] * 144
    _error(_infer(client, body), 400, "batch-size must be <= 8")


def test_unknown_input(client: httpx.Client) -> None:
    body = simple_body()
    body["inputs"].append({"name": "INPUT9", "datatype": "INT32", "shape": [1], "data": [1]})
    _error(_infer(client, body), 400, "INPUT9")


def test_missing_input(client: httpx.Client) -> None:
    body = simple_body()
    del body["inputs"][1]
    _error(_infer(client, body), 400, "INPUT1", "missing")


def test_duplicate_input(client: httpx.Client) -> None:
    body = simple_body()
    body["inputs"][1]["name"] = "INPUT0"
    _error(_infer(client, body), 400, "INPUT0", "more than once")


def test_duplicate_output_names(client: httpx.Client) -> None:
    body = simple_body(outputs=[{"name": "OUTPUT0"}, {"name": "OUTPUT0"}])
    _error(_infer(client, body), 400, "duplicate", "OUTPUT0")


def test_unknown_output(client: httpx.Client) -> None:
    _error(_infer(client, simple_body(outputs=[{"name": "OUT9"}])), 400, "OUT9")


def test_data_nested_deeper_than_shape(client: httpx.Client) -> None:
    deep: object = [1]
    for _ in range(120):
        deep = [deep]
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": deep}]}
    _error(_infer(client, body, "raiser"), 400, "nested deeper")


def test_document_nested_beyond_parser_cap(client: httpx.Client) -> None:
    _error(_infer(client, b"[" * 250_000 + b"]" * 250_000), 400, "malformed JSON")
    _error(client.post("/v2/repository/index", content=b"[" * 250_000), 400, "malformed JSON")


def test_ragged_data(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}]}
    _error(_infer(client, body, "raiser"), 400, "ragged")


def test_body_over_limit_is_413(client: httpx.Client, server) -> None:  # type: ignore[no-untyped-def]
    limit = server.server.settings.http.max_body_bytes
    r = _infer(client, b" " * (limit + 1))
    _error(r, 413, "exceeds")
    under = orjson.dumps(simple_body()) + b" " * (limit - 2000)
    assert _infer(client, under).status_code == 200


def test_chunked_body_over_limit_is_413(client: httpx.Client, server) -> None:  # type: ignore[no-untyped-def]
    limit = server.server.settings.http.max_body_bytes

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    _error(client.post("/v2/models/simple/infer", content=chunks()), 413, "exceeds")


def test_gzip_bomb_is_413(client: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))
    assert len(bomb) < 100_000
    r = _infer(client, bomb, headers={"Content-Encoding": "gzip"})
    _error(r, 413, "decompressed")


def test_corrupt_deflate_is_400(client: httpx.Client) -> None:
    r = _infer(client, zlib.compress(b"{}")[:-3], headers={"Content-Encoding": "deflate"})
    _error(r, 400, "deflate")


def test_unknown_content_encoding_is_415(client: httpx.Client) -> None:
    r = _infer(client, simple_body(), headers={"Content-Encoding": "br"})
    _error(r, 415, "Content-Encoding", "br")


@pytest.mark.parametrize("value", ["99999999999", "-1", "abc", "1e3", "5000"])
def test_header_length_lies(client: httpx.Client, value: str) -> None:
    r = _infer(client, simple_body(), headers={"Inference-Header-Content-Length": value})
    _error(r, 400, "Inference-Header-Content-Length")


def test_binary_size_runs_past_body(client: httpx.Client) -> None:
    head = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [4],
                                     "parameters": {"binary_data_size": 16}}]})  # fmt: skip
    r = client.post("/v2/models/raiser/infer", content=head + b"\0" * 8,
                    headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    _error(r, 400, "binary_data_size", "past the end")


def test_unclaimed_binary_data(client: httpx.Client) -> None:
    head = orjson.dumps(simple_body())
    r = client.post("/v2/models/simple/infer", content=head + b"\0" * 8,
                    headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    _error(r, 400, "binary data no input claims")


def test_raw_body_not_fitting_input(client: httpx.Client) -> None:
    r = client.post("/v2/models/iris_sklearn/infer", content=b"\0" * 20,
                    headers={"Inference-Header-Content-Length": "0"})  # fmt: skip
    _error(r, 400, "does not fit")
    r = client.post("/v2/models/simple/infer", content=b"\0" * 64,
                    headers={"Inference-Header-Content-Length": "0"})  # fmt: skip
    _error(r, 400, "exactly one input")


def test_unknown_model_is_404(client: httpx.Client) -> None:
    for path in ("/v2/models/nope/infer", "/v2/models/nope/versions/1/infer"):
        _error(client.post(path, json=simple_body()), 404, "Request for unknown model", "nope")
    _error(client.get("/v2/models/nope"), 404, "Request for unknown model")
    _error(client.get("/v2/models/nope/ready"), 404, "Request for unknown model")
    _error(client.post("/v2/models/simple/versions/3/infer", json=simple_body()), 404,
           "Request for unknown model")  # fmt: skip


def test_wrong_method_is_405(client: httpx.Client) -> None:
    _error(client.get("/v2/models/simple/infer"), 405, "POST")


def test_unknown_route_is_404_json(client: httpx.Client) -> None:
    r = client.get("/v2/nothing/here")
    assert r.status_code == 404 and "error" in r.json()


def test_model_that_raises_is_500_and_next_works(client: httpx.Client) -> None:
    bad = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1, -1]}]}
    msg = _error(_infer(client, bad, "raiser"), 500, "boom: negative input")
    assert "Traceback" not in msg and "/" not in msg
    good = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    r = _infer(client, good, "raiser")
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0, 4.0]


def test_failed_model_is_unavailable_while_others_serve(client: httpx.Client) -> None:
    r = client.get("/v2/models/broken/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    msg = _error(_infer(client, simple_body(), "broken"), 503, "broken", "not ready")
    assert "onnx" in msg.lower() or "protobuf" in msg.lower() or "load" in msg.lower()
    assert client.get("/v2/health/ready").status_code == 200  # broken has required: false


def test_required_model_failing_makes_server_not_ready(
    client: httpx.Client,
    scratch_repo,  # type: ignore[no-untyped-def]
) -> None:
    model = scratch_repo / "broken_required" / "1"
    model.mkdir(parents=True)
    (model / "model.onnx").write_bytes(b"garbage")
    try:
        r = client.post("/v2/repository/models/broken_required/load", headers=ADMIN)
        assert r.status_code == 400
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and "broken_required" in ready.json()["error"]
    finally:
        client.post("/v2/repository/models/broken_required/unload", headers=ADMIN)
    assert client.get("/v2/health/ready").status_code == 200


def test_load_overrides_refused(client: httpx.Client) -> None:
    r = client.post("/v2/repository/models/simple/load", headers=ADMIN,
                    json={"parameters": {"file:1/model.onnx": "AAAA"}})  # fmt: skip
    _error(r, 400, "not accepted")


@pytest.mark.parametrize("name", ["..", "a..b", "%2e%2e", "x" * 200])
def test_traversal_names_on_load(client: httpx.Client, name: str) -> None:
    r = client.post(f"/v2/repository/models/{name}/load", headers=ADMIN)
    assert r.status_code in (400, 404), r.text
    assert "error" in r.json()
