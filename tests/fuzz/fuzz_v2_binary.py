"""Fuzz target: the V2 binary tensor extension, as the HTTP server decodes a request: the
`Inference-Header-Content-Length` header value, then a JSON header followed by tensor bytes, or
(header value 0) a raw body for a model's one input.

Input layout: one byte picks the model inputs (for raw bodies), then the header value up to the
first newline (no newline: no header), then the body.

Invariant: decoding either raises InvalidInput or yields inputs that are arrays of their
datatype; a raw body fits the model input's shape; and what decodes re-encodes (binary response
encoding) to a body that decodes to the same tensors. Anything else escaping is a bug.
"""

from __future__ import annotations

import orjson
from harness import check_request, instrument, run, same_tensor

with instrument(__name__, "inferd"):
    from inferd.api.http.v2codec import (
        decode_raw,
        decode_request,
        encode_response,
        parse_header_length,
    )
    from inferd.core.errors import InvalidInput
    from inferd.core.spec import TensorSpec
    from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor

#: Model signatures a raw body can be aimed at (two inputs: a raw body is refused).
MODELS: list[list[TensorSpec]] = [
    [TensorSpec("x", "FP32", (-1, 4))],
    [TensorSpec("s", "BYTES", (1,))],
    [TensorSpec("s", "BYTES", (-1, 1))],
    [TensorSpec("b", "BOOL", (2, -1))],
    [TensorSpec("i", "INT64", ())],
    [TensorSpec("h", "FP16", (-1,))],
    [TensorSpec("u", "UINT8", (3, 2))],
    [TensorSpec("a", "FP32", (1,)), TensorSpec("b", "FP32", (1,))],
]


def _fits(shape: tuple[int, ...], spec: TensorSpec) -> bool:
    return len(shape) == len(spec.shape) and all(
        d == s or s == -1 for d, s in zip(shape, spec.shape, strict=True)
    )


def _round_trip(request: InferenceRequest) -> None:
    """Echo the inputs as binary outputs, turn the response back into a request, decode it."""
    echo = [Tensor(t.name, t.datatype, t.data) for t in request.inputs]
    body, json_len = encode_response(
        InferenceResponse("m", "1", echo),
        InferenceRequest([], parameters={"binary_data_output": True}),
    )
    assert json_len is not None
    doc = orjson.loads(body[:json_len])
    header = orjson.dumps({"inputs": doc["outputs"]})
    again = decode_request(header + body[json_len:], len(header))
    assert len(again.inputs) == len(echo)
    for a, b in zip(echo, again.inputs, strict=True):
        assert same_tensor(a, b), (a, b)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    model = MODELS[data[0] % len(MODELS)]
    head, newline, body = data[1:].partition(b"\n")
    # Header values reach the server as latin-1 text (ASGI gives bytes).
    value = head.decode("latin-1") if newline else None
    if not newline:
        body = data[1:]
    try:
        length = parse_header_length(value, len(body))
        request = decode_raw(body, model) if length == 0 else decode_request(body, length)
    except InvalidInput:
        return
    check_request(request)
    if length == 0:
        assert len(model) == 1 and _fits(request.inputs[0].data.shape, model[0])
    _round_trip(request)


if __name__ == "__main__":
    run(test_one_input)
