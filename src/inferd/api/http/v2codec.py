"""Open Inference Protocol V2 wire codec: JSON and the binary tensor extension, both ways.

Decoding never allocates from a declared size: every element count is checked against the
data actually received before an array is built. Raw tensor bytes (shared with gRPC) live in
`inferd.api.tensor_codec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from inferd.api.tensor_codec import decode_binary, element_count, tensor_bytes
from inferd.core.datatypes import DATATYPES, ITEMSIZE, NUMPY_DTYPES, datatype_of
from inferd.core.errors import InvalidInput
from inferd.core.spec import TensorSpec
from inferd.core.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
#: numpy's bounds on a shape, checked before any array is built: numpy 1.x allows 32
#: dimensions (2.x 64), and the non-zero dimensions times the item size (8 bytes at most) must
#: fit an int64 even when another dimension is 0 and the array is empty.
MAX_RANK = 32
_MAX_SPAN = (2**63 - 1) // 8
_INT_INFO = {k: np.iinfo(v) for k, v in NUMPY_DTYPES.items() if v.kind in "iu"}
_NUMERIC_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def loads(body: bytes | memoryview) -> Any:
    """Parse JSON; malformed or too-deep documents are a 400 naming the problem."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"malformed JSON in request body: {e}") from None


def parse_header_length(value: str | None, body_len: int) -> int | None:
    """Validate Inference-Header-Content-Length: an integer between 0 and the body length."""
    if value is None:
        return None
    v = value.strip()
    # isdigit() alone accepts '²' (latin-1 header bytes), which int() refuses.
    if not (v.isascii() and v.isdigit()) or len(v) > 19:
        raise InvalidInput(f"Inference-Header-Content-Length '{value[:32]}' is not a valid length")
    n = int(v)
    if n > body_len:
        raise InvalidInput(
            f"Inference-Header-Content-Length {n} is larger than the request body ({body_len})"
        )
    return n


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of integers")
    for d in raw:
        if not isinstance(d, int) or isinstance(d, bool):
            raise InvalidInput(f"input '{name}': 'shape' must be a list of integers")
        if d < 0:
            raise InvalidInput(f"input '{name}': shape dimension {d} is negative")
    if len(raw) > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': 'shape' has {len(raw)} dimensions, at most {MAX_RANK} are supported"
        )
    # A tensor with elements is checked against the data received; an empty one is not.
    if 0 in raw and element_count(d for d in raw if d) > _MAX_SPAN:
        raise InvalidInput(f"input '{name}': 'shape' {raw} is larger than any tensor can be")
    return tuple(raw)


def decode_json_data(
    name: str, datatype: str, data: Any, shape: tuple[int, ...] | None
) -> np.ndarray:
    """Turn JSON `data` (flat or nested) into an array of `datatype`, reshaped to `shape`."""
    if not isinstance(data, list):
        data = [data]
    rank = len(shape) if shape is not None else 64
    depth, probe = 0, data
    while isinstance(probe, list):
        depth += 1
        if depth > max(rank, 1):
            raise InvalidInput(
                f"input '{name}': 'data' is nested deeper than the {rank} dimension(s) of its shape"
            )
        probe = probe[0] if probe else None
    if datatype == "BYTES":
        flat: list[bytes] = []
        _flatten_bytes(name, data, flat, 1, max(rank, 1))
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        try:
            raw = np.asarray(data)
        except (ValueError, TypeError):
            raise InvalidInput(
                f"input '{name}': 'data' is ragged or not a list of values"
            ) from None
        target = NUMPY_DTYPES[datatype]
        if target.kind in "iu" and raw.dtype.kind in "fO" and raw.size:
            raw = _exact_integers(name, datatype, data)
        if raw.dtype.kind not in _NUMERIC_KINDS[target.kind] and raw.size:
            raise InvalidInput(
                f"input '{name}': 'data' holds values that are not {datatype} "
                f"(got {_kind_name(raw.dtype.kind)})"
            )
        info = _INT_INFO.get(datatype)
        if info is not None and raw.size and raw.dtype != target:
            lo, hi = raw.min(), raw.max()
            if lo < info.min or hi > info.max:
                raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = raw.astype(target, copy=False)
        if (
            target.kind == "f"
            and raw.size
            and not np.all(np.isfinite(arr))
            and np.all(np.isfinite(raw.astype(np.float64)))
        ):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    if shape is None:
        return arr
    expected = element_count(shape)
    if arr.size != expected:
        raise InvalidInput(
            f"input '{name}': unexpected number of elements; shape {list(shape)} expects "
            f"{expected}, got {arr.size}"
        )
    return arr.reshape(shape)


def _exact_integers(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    """Slow path: integers that numpy widened to float (e.g. UINT64 above 2**63)."""
    try:
        items = np.asarray(data, dtype=object)
    except ValueError:
        raise InvalidInput(f"input '{name}': 'data' is ragged or not a list of values") from None
    flat = items.ravel().tolist()
    bad = next((x for x in flat if type(x) is not int), None)
    if bad is not None or (flat and None in flat):
        kind = "floating-point numbers" if isinstance(bad, float) else "non-integer values"
        raise InvalidInput(
            f"input '{name}': 'data' holds values that are not {datatype} (got {kind})"
        )
    try:
        return np.array(flat, dtype=NUMPY_DTYPES[datatype]).reshape(items.shape)
    except OverflowError:
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}") from None


def _kind_name(kind: str) -> str:
    return {
        "U": "strings",
        "S": "strings",
        "O": "mixed or out-of-range values",
        "b": "booleans",
        "f": "floating-point numbers",
        "i": "integers",
        "u": "integers",
    }.get(kind, kind)


def _flatten_bytes(name: str, data: list[Any], out: list[bytes], depth: int, rank: int) -> None:
    for item in data:
        if isinstance(item, str):
            out.append(item.encode())
        elif isinstance(item, list):
            # The check above follows first elements only; a later element nested deeper
            # than the shape is refused here, before it can exhaust the stack.
            if depth >= rank:
                raise InvalidInput(
                    f"input '{name}': 'data' is nested deeper than the {rank} dimension(s) "
                    "of its shape"
                )
            _flatten_bytes(name, item, out, depth + 1, rank)
        else:
            raise InvalidInput(f"input '{name}': BYTES 'data' elements must be strings")


def decode_request(body: bytes, header_length: int | None) -> InferenceRequest:
    """Decode a V2 infer body: JSON only, or a JSON header followed by binary tensors."""
    if header_length is None:
        doc = loads(body)
        binary = memoryview(b"")
    else:
        view = memoryview(body)
        doc = loads(view[:header_length])
        binary = view[header_length:]
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    offset = 0
    inputs: list[Tensor] = []
    for i, obj in enumerate(raw_inputs):
        if not isinstance(obj, dict):
            raise InvalidInput(f"inputs[{i}] must be an object")
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}]: 'name' is required")
        datatype = obj.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise InvalidInput(f"input '{name}': unsupported 'datatype' {str(datatype)[:32]!r}")
        shape = _shape(name, obj.get("shape"))
        params = obj.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"input '{name}': 'parameters' must be an object")
        size = params.get("binary_data_size") if params else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': 'binary_data_size' must be an integer >= 0")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body"
                )
            arr = decode_binary(name, datatype, binary[offset : offset + size], shape)
            offset += size
        else:
            if "data" not in obj:
                raise InvalidInput(f"input '{name}': 'data' is required")
            arr = decode_json_data(name, datatype, obj["data"], shape)
        inputs.append(Tensor(name, datatype, arr, params))
    if offset != len(binary):
        raise InvalidInput(
            f"request has {len(binary) - offset} byte(s) of binary data no input claims"
        )
    outputs = _requested_outputs(doc.get("outputs"))
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput("'id' must be a string")
    parameters = doc.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return InferenceRequest(inputs=inputs, id=rid, parameters=parameters, outputs=outputs)


def decode_raw(body: bytes, inputs: Sequence[TensorSpec]) -> InferenceRequest:
    """`Inference-Header-Content-Length: 0`: the whole body is the one input's bytes."""
    if len(inputs) != 1:
        raise InvalidInput("a raw binary request needs a model with exactly one input")
    spec = inputs[0]
    if spec.datatype == "BYTES":
        shape: tuple[int, ...] = (1,) if len(spec.shape) <= 1 else (1,) * len(spec.shape)
        arr = decode_binary(spec.name, "BYTES", memoryview(body), shape)
    else:
        item = ITEMSIZE[spec.datatype]
        if len(body) % item:
            raise InvalidInput(
                f"raw body of {len(body)} bytes is not a whole number of {spec.datatype}"
            )
        n = len(body) // item
        known = element_count(d for d in spec.shape if d != -1)
        free = sum(1 for d in spec.shape if d == -1)
        if free > 1 or (known and n % known) or (free == 0 and n != known):
            raise InvalidInput(
                f"raw body of {n} {spec.datatype} element(s) does not fit input '{spec.name}' "
                f"shape {list(spec.shape)}"
            )
        shape = tuple(n // max(known, 1) if d == -1 else d for d in spec.shape)
        arr = decode_binary(spec.name, spec.datatype, memoryview(body), shape)
    return InferenceRequest(
        inputs=[Tensor(spec.name, spec.datatype, arr)],
        parameters={"binary_data_output": True},
    )


def _requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    out = []
    for i, o in enumerate(raw):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidInput(f"outputs[{i}]: 'name' is required")
        params = o.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"output '{o['name']}': 'parameters' must be an object")
        out.append(RequestedOutput(o["name"], params))
    return out


def _binary_flags(request: InferenceRequest, names: list[str]) -> list[bool]:
    default = bool((request.parameters or {}).get("binary_data_output", False))
    per: dict[str, bool] = {}
    for o in request.outputs or ():
        if o.parameters and "binary_data" in o.parameters:
            per[o.name] = bool(o.parameters["binary_data"])
    return [per.get(n, default) for n in names]


def _json_data(t: Tensor) -> Any:
    if t.datatype == "BYTES":
        return [
            (x.decode(errors="replace") if isinstance(x, bytes) else str(x)) for x in t.data.ravel()
        ]
    return np.ascontiguousarray(t.data).ravel()


def encode_response(
    response: InferenceResponse, request: InferenceRequest
) -> tuple[bytes, int | None]:
    """Encode a response; returns (body, json header length or None when all-JSON)."""
    outs = response.outputs
    flags = _binary_flags(request, [t.name for t in outs])
    blobs: list[bytes] = []
    encoded = []
    for t, binary in zip(outs, flags, strict=True):
        item: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
        if t.parameters:
            item["parameters"] = dict(t.parameters)
        if binary:
            blob = tensor_bytes(t)
            blobs.append(blob)
            item.setdefault("parameters", {})["binary_data_size"] = len(blob)
        else:
            item["data"] = _json_data(t)
        encoded.append(item)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": encoded,
    }
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def output_tensor(name: str, array: np.ndarray, datatype: str | None = None) -> Tensor:
    """Wrap a runtime output as a Tensor, naming its V2 datatype."""
    arr = np.asarray(array)
    return Tensor(name, datatype or datatype_of(arr), arr)
