"""The V2 codec: JSON and binary tensors for every datatype, and each malformed form."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from inferd.api.http.v2codec import (
    decode_binary,
    decode_json_data,
    decode_raw,
    decode_request,
    encode_response,
    parse_header_length,
)
from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import InvalidInput
from inferd.core.spec import TensorSpec
from inferd.core.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

NUMERIC = sorted(set(NUMPY_DTYPES) - {"BYTES"})


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    return (np.arange(6) * 3).astype(NUMPY_DTYPES[datatype]).reshape(2, 3)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_nested_and_flat_give_the_same_array(datatype: str) -> None:
    arr = _sample(datatype)
    nested = decode_json_data("x", datatype, arr.tolist(), (2, 3))
    flat = decode_json_data("x", datatype, arr.ravel().tolist(), (2, 3))
    assert nested.dtype == NUMPY_DTYPES[datatype]
    np.testing.assert_array_equal(nested, arr)
    np.testing.assert_array_equal(flat, arr)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_decode_matches_little_endian_bytes(datatype: str) -> None:
    arr = _sample(datatype)
    buf = memoryview(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    out = decode_binary("x", datatype, buf, (2, 3))
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == NUMPY_DTYPES[datatype]


def test_bytes_binary_matches_tritonclient_serialisation() -> None:
    items = np.array([b"a", b"", "héllo".encode(), b"\x00\x01"], dtype=object).reshape(2, 2)
    wire = serialize_byte_tensor(items).item()
    decoded = decode_binary("s", "BYTES", memoryview(wire), (2, 2))
    assert decoded.tolist() == items.tolist()
    response = InferenceResponse("m", "1", [Tensor("s", "BYTES", decoded)])
    body, n = encode_response(
        response, InferenceRequest([], parameters={"binary_data_output": True})
    )
    assert n is not None
    header = orjson.loads(body[:n])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(wire)
    assert deserialize_bytes_tensor(body[n:]).tolist() == items.ravel().tolist()


@pytest.mark.parametrize(
    ("data", "what"),
    [(b"\x05\x00\x00\x00ab", "runs past"), (b"\x01\x00", "truncated"),
     (struct.pack("<I", 1) + b"a", "number of BYTES")],
)  # fmt: skip
def test_bytes_binary_lies(data: bytes, what: str) -> None:
    with pytest.raises(InvalidInput, match=what):
        decode_binary("s", "BYTES", memoryview(data), (2,))


def test_binary_size_mismatch_is_refused_without_allocating() -> None:
    shape = (16, 2**60 + 2)
    with pytest.raises(InvalidInput, match=f"expects {16 * (2**60 + 2) * 4} bytes, got 4"):
        decode_binary("x", "FP32", memoryview(b"\0" * 4), shape)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", ["a"], "strings"),
        ("FP32", [True], "booleans"),
        ("INT8", [300], "out of range"),
        ("UINT8", [-1], "out of range"),
        ("INT64", [2**70], "out of range"),
        ("INT32", [1.5], "floating"),
        ("BOOL", [1], "integers"),
        ("BYTES", [1], "strings"),
        ("FP16", [1e6], "out of range"),
    ],
)
def test_json_wrong_values(datatype: str, data: list, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_json_data("x", datatype, data, (1,))


def test_json_count_and_depth() -> None:
    with pytest.raises(InvalidInput, match="expects 4, got 3"):
        decode_json_data("x", "FP32", [1, 2, 3], (2, 2))
    with pytest.raises(InvalidInput, match="nested deeper"):
        decode_json_data("x", "FP32", [[[1]]], (1, 1))
    with pytest.raises(InvalidInput, match="ragged"):
        decode_json_data("x", "FP32", [[1, 2], [3]], (2, 2))


def test_empty_tensor() -> None:
    assert decode_json_data("x", "FP32", [], (0, 4)).shape == (0, 4)


# "\u00b2" and "1\u00b9": latin-1 superscripts that str.isdigit() accepts and int() refuses.
@pytest.mark.parametrize(
    "value", ["-1", "abc", " 12x", "99999999999999999999999", "101", "\u00b2", "1\u00b9"]
)
def test_header_length_validation(value: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        parse_header_length(value, 100)


def test_header_length_ok() -> None:
    assert parse_header_length(None, 10) is None
    assert parse_header_length("0", 10) == 0
    assert parse_header_length("10", 10) == 10


def test_decode_request_fields() -> None:
    body = orjson.dumps(
        {
            "id": "abc",
            "parameters": {"binary_data_output": True, "priority": 1},
            "inputs": [{"name": "a", "datatype": "INT32", "shape": [2], "data": [1, 2]}],
            "outputs": [{"name": "o", "parameters": {"binary_data": False}}],
        }
    )
    req = decode_request(body, None)
    assert req.id == "abc" and req.parameters == {"binary_data_output": True, "priority": 1}
    assert req.outputs == [RequestedOutput("o", {"binary_data": False})]
    np.testing.assert_array_equal(req.inputs[0].data, np.array([1, 2], np.int32))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, "'name' is required"),
        ({"inputs": [{"name": "a", "shape": [1], "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "a", "datatype": ["FP32"], "shape": [1], "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "a", "datatype": {"FP32": 1}, "shape": [1], "data": [1]}]},
         "datatype"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": "1", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1.5], "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}, "'data' is required"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 5},
         "'id'"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
          "outputs": [{"nam": "x"}]}, "outputs[0]"),
    ],
)  # fmt: skip
def test_decode_request_errors_name_the_field(doc: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_request(orjson.dumps(doc), None)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1] * 65, "65 dimensions, at most 32"),  # numpy: ValueError past 64
        ([0, 2**62, 2**62], "larger than any tensor"),
        ([2**61, 0], "larger than any tensor"),
    ],
)
def test_shapes_numpy_cannot_hold_are_refused(shape: list[int], message: str) -> None:
    # Found by tests/fuzz: numpy's ValueError escaped (a 500) for both body forms.
    doc = {"inputs": [{"name": "a", "datatype": "FP64", "shape": shape, "data": []}]}
    with pytest.raises(InvalidInput, match=f"input 'a': 'shape'.*{message}"):
        decode_request(orjson.dumps(doc), None)
    del doc["inputs"][0]["data"]  # type: ignore[attr-defined]
    doc["inputs"][0]["parameters"] = {"binary_data_size": 0}  # type: ignore[index]
    header = orjson.dumps(doc)
    with pytest.raises(InvalidInput, match=f"input 'a': 'shape'.*{message}"):
        decode_request(header, len(header))


def test_bytes_nested_deeper_than_the_shape_after_the_first_element() -> None:
    # Found by tests/fuzz: only first elements were depth-checked, so a later element nested
    # ~1000 deep exhausted the stack (RecursionError) while flattening BYTES.
    n = 1020  # orjson's own nesting limit is 1024
    body = b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"data":["a",'
    body += b"[" * n + b'"b"' + b"]" * n + b"]}]}"
    with pytest.raises(InvalidInput, match="input 's': 'data' is nested deeper than the 1"):
        decode_request(body, None)
    with pytest.raises(InvalidInput, match="nested deeper than the 2"):
        decode_json_data("s", "BYTES", [["a"], [["b"]]], (2, 1))
    assert decode_json_data("s", "BYTES", [["a"], ["b"]], (2, 1)).tolist() == [[b"a"], [b"b"]]


def test_raw_request_shapes() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4))
    req = decode_raw(np.zeros(8, "<f4").tobytes(), [spec])
    assert req.inputs[0].data.shape == (2, 4)
    assert req.parameters == {"binary_data_output": True}
    with pytest.raises(InvalidInput, match="does not fit"):
        decode_raw(b"\0" * 12, [spec])
    with pytest.raises(InvalidInput, match="whole number"):
        decode_raw(b"\0" * 6, [spec])
    text = decode_raw(serialize_byte_tensor(np.array([b"hi"], object)).item(),
                      [TensorSpec("t", "BYTES", (1,))])  # fmt: skip
    assert text.inputs[0].data.tolist() == [b"hi"]


def test_encode_mixed_binary_and_json_outputs() -> None:
    a = np.arange(3, dtype=np.float32)
    b = np.array([np.nan, np.inf, 1.0])
    response = InferenceResponse("m", "1", [Tensor("a", "FP32", a), Tensor("b", "FP64", b)], id="q")
    request = InferenceRequest([], outputs=[RequestedOutput("a", {"binary_data": True}),
                                            RequestedOutput("b")])  # fmt: skip
    body, n = encode_response(response, request)
    assert n is not None
    header = orjson.loads(body[:n])
    assert header["id"] == "q" and header["model_version"] == "1"
    assert np.frombuffer(body[n:], "<f4").tolist() == [0.0, 1.0, 2.0]
    assert header["outputs"][1]["data"] == [None, None, 1.0]  # NaN/Inf policy: null in JSON
