"""gRPC codec: ModelInferRequest/Response <-> core types, every datatype, typed and raw, and
the bad inputs it must refuse; tritonclient.grpc's request builder and InferResult are oracles."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from inferd.api.grpc.codec import CONTENTS_FIELD, from_core, params_to_core, to_core
from inferd.api.grpc.errors import GrpcStatus, code_of
from inferd.api.grpc.health import SERVING, HealthCheckRequest, HealthCheckResponse
from inferd.core import errors
from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import InvalidInput
from inferd.core.tensors import InferenceResponse, Tensor

DATATYPES = sorted(NUMPY_DTYPES)
TYPED = sorted(CONTENTS_FIELD)  # every datatype but FP16


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    n = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([f"s{i}".encode() * (i % 3) for i in range(n)], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return (np.arange(n) % 2 == 0).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu":  # the top of the range: no silent wrapping
        return (np.iinfo(dtype).max - np.arange(n, dtype=dtype)).reshape(shape)
    return (np.arange(n) / 4 - 0.5).astype(dtype).reshape(shape)


def typed_request(datatype: str, arr: np.ndarray, **extra: Any) -> Any:
    req = pb.ModelInferRequest(model_name="m", **extra)
    t = req.inputs.add(name="IN", datatype=datatype, shape=arr.shape)
    values = arr.ravel().tolist()
    getattr(t.contents, CONTENTS_FIELD[datatype]).extend(values)
    return req


def raw_request(datatype: str, arr: np.ndarray) -> Any:
    """Built by tritonclient itself (it always sends raw_input_contents)."""
    inp = tc.InferInput("IN", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.extend([inp._get_tensor()])
    req.raw_input_contents.append(inp._get_content())
    return req


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_every_datatype(datatype: str) -> None:
    arr = sample(datatype)
    got = to_core(typed_request(datatype, arr, id="r1"))
    (t,) = got.inputs
    assert (t.name, t.datatype, t.data.dtype, t.data.shape) == (
        "IN", datatype, NUMPY_DTYPES[datatype], (2, 3))  # fmt: skip
    np.testing.assert_array_equal(t.data, arr)
    assert got.id == "r1" and got.parameters is None and got.outputs is None


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_contents_every_datatype(datatype: str) -> None:
    arr = sample(datatype)
    (t,) = to_core(raw_request(datatype, arr)).inputs
    assert t.data.dtype == NUMPY_DTYPES[datatype] and t.data.shape == (2, 3)
    np.testing.assert_array_equal(t.data, arr)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_every_datatype_reads_back_in_tritonclient(datatype: str) -> None:
    arr = sample(datatype)
    resp = InferenceResponse("m", "1", [Tensor("OUT", datatype, arr)], id="r9")
    msg = from_core(resp)
    assert len(msg.raw_output_contents) == 1 and not msg.outputs[0].HasField("contents")
    result = tc.InferResult(msg)
    got = result.as_numpy("OUT")
    assert got.shape == (2, 3)
    if datatype == "BYTES":
        assert got.ravel().tolist() == arr.ravel().tolist()
    else:
        assert got.dtype == NUMPY_DTYPES[datatype]
        np.testing.assert_array_equal(got, arr)
    assert msg.model_name == "m" and msg.model_version == "1" and msg.id == "r9"


def test_response_parameters_and_empty_tensor() -> None:
    out = Tensor("OUT", "FP32", np.zeros((0, 4), np.float32), {"classification": 2, "ok": True})
    resp = InferenceResponse("m", "1", [out], parameters={"f": 0.5, "s": "x", "big": 2**64 - 1})
    msg = from_core(resp)
    assert list(msg.outputs[0].shape) == [0, 4] and msg.raw_output_contents[0] == b""
    assert params_to_core(msg.outputs[0].parameters) == {"classification": 2, "ok": True}
    assert params_to_core(msg.parameters) == {"f": 0.5, "s": "x", "big": 2**64 - 1}
    assert msg.id == ""


def test_parameters_become_plain_values() -> None:
    req = raw_request("INT32", sample("INT32"))
    p = req.parameters
    p["b"].bool_param = True
    p["i"].int64_param = -7
    p["s"].string_param = "text"
    p["d"].double_param = 2.5
    p["u"].uint64_param = 2**64 - 1
    req.inputs[0].parameters["shm"].string_param = "none"
    out = req.outputs.add(name="OUT")
    out.parameters["classification"].int64_param = 3
    got = to_core(req, timeout_s=1.5)
    assert got.parameters == {"b": True, "i": -7, "s": "text", "d": 2.5, "u": 2**64 - 1}
    assert got.inputs[0].parameters == {"shm": "none"}
    assert got.outputs is not None and got.outputs[0].name == "OUT"
    assert got.outputs[0].parameters == {"classification": 3}
    assert got.timeout_s == 1.5 and got.id is None


def test_tritonclient_request_builder_round_trip() -> None:
    """Two inputs, requested outputs with class_count: exactly what tritonclient.grpc sends."""
    from tritonclient.grpc._utils import _get_inference_request

    a, b = sample("INT32", (1, 16)), sample("BYTES", (1, 4))
    inputs = [tc.InferInput("A", [1, 16], "INT32"), tc.InferInput("B", [1, 4], "BYTES")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    outputs = [tc.InferRequestedOutput("X", class_count=2), tc.InferRequestedOutput("Y")]
    req = _get_inference_request("m", inputs, "", "id-1", outputs, 0, False, False, 0, None, None)
    got = to_core(pb.ModelInferRequest.FromString(req.SerializeToString()))
    np.testing.assert_array_equal(got.inputs[0].data, a)
    assert got.inputs[1].data.tolist() == b.tolist()
    assert got.outputs is not None
    assert [(o.name, o.parameters) for o in got.outputs] == [
        ("X", {"classification": 2}), ("Y", None)]  # fmt: skip
    assert got.id == "id-1"


# ---- refused ------------------------------------------------------------------------------


def refused(req: Any, *words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        to_core(req)
    for w in words:
        assert w in err.value.message, err.value.message


def test_typed_count_mismatch() -> None:
    req = typed_request("INT32", sample("INT32"))
    req.inputs[0].shape[1] = 4
    refused(req, "'IN'", "expects 8, got 6")


def test_raw_byte_size_mismatch() -> None:
    req = raw_request("FP32", sample("FP32"))
    req.raw_input_contents[0] = req.raw_input_contents[0][:-1]
    refused(req, "byte size mismatch", "expects 24 bytes, got 23")


def test_huge_shape_is_refused_before_allocating() -> None:
    req = raw_request("FP64", sample("FP64"))
    del req.inputs[0].shape[:]
    req.inputs[0].shape.extend([2**40, 2**40])
    refused(req, "byte size mismatch")
    typed = typed_request("FP64", sample("FP64"))
    typed.inputs[0].shape[0] = 2**62
    refused(typed, "expects")


def test_negative_dimension() -> None:
    req = raw_request("INT32", sample("INT32"))
    req.inputs[0].shape[0] = -2
    refused(req, "'IN'", "negative")


def test_mixing_raw_and_typed() -> None:
    req = raw_request("INT32", sample("INT32"))
    req.inputs[0].contents.int_contents.extend([1] * 6)
    refused(req, "'contents' cannot be used together with raw_input_contents")


def test_raw_entry_count_must_match_inputs() -> None:
    req = raw_request("INT32", sample("INT32"))
    req.raw_input_contents.append(b"")
    refused(req, "2 entries for 1 inputs")


def test_fp16_only_raw() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="IN", datatype="FP16", shape=[2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    refused(req, "FP16", "raw_input_contents")


def test_wrong_contents_field() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="IN", datatype="INT32", shape=[2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    refused(req, "contents.int_contents", "not contents.fp32_contents")


@pytest.mark.parametrize(("datatype", "value"), [("UINT8", 256), ("INT8", -129), ("INT16", 2**15)])
def test_typed_value_out_of_range(datatype: str, value: int) -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="IN", datatype=datatype, shape=[1])
    getattr(t.contents, CONTENTS_FIELD[datatype]).append(value)
    refused(req, "out of range", datatype)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\x05\x00\x00\x00ab", ("runs past",)),  # a length prefix longer than the data
        (b"\x01\x00", ("truncated",)),  # half a length prefix
        (serialize_byte_tensor(np.array([b"a", b"b", b"c"], dtype=object)).item(),
         ("expects 2, got 3",)),  # more elements than the shape
        (serialize_byte_tensor(np.array([b"a"], dtype=object)).item(), ("expects 2, got 1",)),
    ],
    ids=["prefix-too-long", "half-prefix", "too-many", "too-few"],
)  # fmt: skip
def test_bytes_lies(raw: bytes, words: tuple[str, ...]) -> None:
    req = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    req.inputs.add(name="S", datatype="BYTES", shape=[2])
    refused(req, "'S'", *words)


def test_typed_bytes_count() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="S", datatype="BYTES", shape=[3])
    t.contents.bytes_contents.extend([b"x", b"y"])
    refused(req, "expects 3, got 2")


def test_envelope_errors() -> None:
    refused(pb.ModelInferRequest(model_name="m"), "'inputs'")
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="", datatype="INT32", shape=[0])
    refused(req, "inputs[0]", "'name'")
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="X", datatype="BF16", shape=[0])
    refused(req, "unsupported 'datatype'", "BF16")
    req = raw_request("INT32", sample("INT32"))
    req.outputs.add(name="")
    refused(req, "outputs[0]", "'name'")


@pytest.mark.parametrize(
    ("shape", "raw", "words"),
    [
        ([1] * 65, None, ("'IN'", "65 dimensions", "at most 32")),  # numpy: ValueError past 64
        ([0, 2**62, 2**62], b"", ("'IN'", "larger than any tensor")),
        ([2**61, 0], None, ("'IN'", "larger than any tensor")),
    ],
)
def test_shapes_numpy_cannot_hold_are_refused(
    shape: list[int], raw: bytes | None, words: tuple[str, ...]
) -> None:
    # Found by tests/fuzz (grpc_codec): numpy's ValueError escaped as an internal error.
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="IN", datatype="FP64", shape=shape)
    if raw is None:
        t.contents.fp64_contents.extend([1.0] if 0 not in shape else [])
    else:
        req.raw_input_contents.append(raw)
    refused(req, *words)


def test_empty_typed_tensor_is_fine() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="IN", datatype="FP32", shape=[0, 3])
    (t,) = to_core(req).inputs
    assert t.data.shape == (0, 3) and t.data.dtype == np.float32


# ---- status codes and health messages -----------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("m"), grpc.StatusCode.NOT_FOUND),
        (errors.ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ServerNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ModelExecutionError("x"), grpc.StatusCode.INTERNAL),
        (errors.Unsupported("x"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.ModelLoadError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UntrustedArtifact("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InferdError("x"), grpc.StatusCode.INTERNAL),
        (GrpcStatus(grpc.StatusCode.ALREADY_EXISTS, "x"), grpc.StatusCode.ALREADY_EXISTS),
    ],
)
def test_status_table(exc: errors.InferdError, code: grpc.StatusCode) -> None:
    assert code_of(exc) is code


def test_health_messages_use_the_standard_wire_layout() -> None:
    # grpc.health.v1: HealthCheckRequest{string service = 1}, HealthCheckResponse{enum status = 1}
    assert HealthCheckRequest(service="ab").SerializeToString() == b"\x0a\x02ab"
    assert HealthCheckResponse(status=SERVING).SerializeToString() == b"\x08\x01"
    assert HealthCheckResponse.FromString(b"\x08\x02").status == 2
