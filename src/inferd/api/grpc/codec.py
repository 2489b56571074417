"""gRPC wire codec: Triton's ModelInferRequest / ModelInferResponse <-> core types.

Pure (protobuf messages and numpy, no server objects), so the unit tier tests it without sockets.
Typed `contents` and `raw_input_contents` are both accepted, never mixed; responses always carry
`raw_output_contents` (tritonclient reads nothing else). Element counts are checked against the
data actually received before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from inferd.api.tensor_codec import decode_binary, element_count, tensor_bytes
from inferd.core.datatypes import DATATYPES, NUMPY_DTYPES
from inferd.core.errors import InvalidInput
from inferd.core.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

#: The `InferTensorContents` field each datatype travels in; FP16 (and BF16) are raw only.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
#: numpy's bounds on a shape, checked before any array is built (as in the V2 REST codec):
#: numpy 1.x allows 32 dimensions (2.x 64), and the non-zero dimensions times the item size
#: (8 bytes at most) must fit an int64 even when another dimension is 0 and the array is empty.
MAX_RANK = 32
_MAX_SPAN = (2**63 - 1) // 8


# ---- parameters ---------------------------------------------------------------------------


def params_to_core(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """`map<string, InferParameter>` -> plain Python values (None when empty)."""
    if not params:
        return None
    out: dict[str, Any] = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, kind) if kind else None
    return out


def params_from_core(target: MutableMapping[str, Any], params: Mapping[str, Any]) -> None:
    """Fill a `map<string, InferParameter>` from plain values (other types travel as text)."""
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool | np.bool_):
            p.bool_param = bool(value)
        elif isinstance(value, int | np.integer):
            v = int(value)
            if _INT64_MIN <= v <= _INT64_MAX:
                p.int64_param = v
            elif 0 <= v <= _UINT64_MAX:
                p.uint64_param = v
            else:
                p.string_param = str(v)
        elif isinstance(value, float | np.floating):
            p.double_param = float(value)
        elif isinstance(value, str):
            p.string_param = value
        else:
            p.string_param = str(value)


# ---- requests -----------------------------------------------------------------------------


def _shape(name: str, dims: Any) -> tuple[int, ...]:
    shape = tuple(dims)
    if shape and min(shape) < 0:
        raise InvalidInput(f"input '{name}': shape dimension {min(shape)} is negative")
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': shape has {len(shape)} dimensions, at most {MAX_RANK} are supported"
        )
    # A tensor with elements is checked against the data received; an empty one is not.
    if 0 in shape and element_count(d for d in shape if d) > _MAX_SPAN:
        raise InvalidInput(f"input '{name}': shape {list(shape)} is larger than any tensor can be")
    return shape


def decode_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    """Typed `InferTensorContents` -> an array of `datatype` shaped `shape`."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} data can only be sent in raw_input_contents"
        )
    for fd, _ in contents.ListFields():
        if fd.name != field:
            raise InvalidInput(
                f"input '{name}': {datatype} data belongs in contents.{field}, "
                f"not contents.{fd.name}"
            )
    values = getattr(contents, field)
    expected = element_count(shape)
    if len(values) != expected:
        raise InvalidInput(
            f"input '{name}': unexpected number of elements in contents.{field}; shape "
            f"{list(shape)} expects {expected}, got {len(values)}"
        )
    if datatype == "BYTES":
        arr = np.empty(expected, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wire = _FIELD_DTYPE[field]
    arr = np.fromiter(values, dtype=wire, count=expected)
    target = NUMPY_DTYPES[datatype]
    if target != wire:
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
        arr = arr.astype(target)
    return arr.reshape(shape)


def to_core(request: Any, timeout_s: float | None = None) -> InferenceRequest:
    """Decode a `ModelInferRequest` (typed contents or raw_input_contents, never both).

    `timeout_s` is what is left of the call's gRPC deadline (None: no deadline)."""
    inputs = request.inputs
    if not inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
            "send one per input, in order"
        )
    tensors: list[Tensor] = []
    for i, inp in enumerate(inputs):
        name = inp.name
        if not name:
            raise InvalidInput(f"inputs[{i}]: 'name' is required")
        datatype = inp.datatype
        if datatype not in DATATYPES:
            raise InvalidInput(f"input '{name}': unsupported 'datatype' {datatype[:32]!r}")
        shape = _shape(name, inp.shape)
        if raw:
            if inp.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}': 'contents' cannot be used together with raw_input_contents"
                )
            arr = decode_binary(name, datatype, memoryview(raw[i]), shape)
        else:
            arr = decode_contents(name, datatype, shape, inp.contents)
        tensors.append(Tensor(name, datatype, arr, params_to_core(inp.parameters)))
    outputs = None
    if request.outputs:
        outputs = []
        for i, o in enumerate(request.outputs):
            if not o.name:
                raise InvalidInput(f"outputs[{i}]: 'name' is required")
            outputs.append(RequestedOutput(o.name, params_to_core(o.parameters)))
    return InferenceRequest(
        inputs=tensors,
        id=request.id or None,
        parameters=params_to_core(request.parameters),
        outputs=outputs,
        timeout_s=timeout_s,
    )


# ---- responses ----------------------------------------------------------------------------


def from_core(response: InferenceResponse) -> Any:
    """Encode a `ModelInferResponse`; every output's data goes in raw_output_contents."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    outputs = msg.outputs
    raw = msg.raw_output_contents
    for t in response.outputs:
        o = outputs.add()
        o.name = t.name
        o.datatype = t.datatype
        o.shape.extend(t.data.shape)
        if t.parameters:
            params_from_core(o.parameters, t.parameters)
        raw.append(tensor_bytes(t))
    if response.parameters:
        params_from_core(msg.parameters, response.parameters)
    return msg
