"""V2 (Open Inference Protocol) tensors ↔ Python values for the SDK.

numpy is imported only inside the functions that need it, so `import inferd.client` stays light.
Plain nested lists are encoded without numpy: floats as FP32 (what most models take), ints as
INT64, bools as BOOL, strings as BYTES. numpy arrays keep their own dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: numpy dtype name → V2 datatype.
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
#: V2 datatype → numpy dtype name (BYTES decodes to an object array of str).
DTYPES = {v: k for k, v in DATATYPES.items()}


def _is_array(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape")


def encode_tensor(name: str, value: Any) -> dict[str, Any]:
    """One V2 input tensor `{"name", "datatype", "shape", "data"}` from an array or nested list."""
    if _is_array(value):
        return _encode_array(name, value)
    shape, flat = _flatten(name, value)
    return {"name": name, "datatype": _list_datatype(name, flat), "shape": shape,
            "data": [_text(name, x) if isinstance(x, bytes) else x for x in flat]}  # fmt: skip


def _encode_array(name: str, value: Any) -> dict[str, Any]:
    import numpy as np

    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind in ("U", "S", "O"):
        data = [_text(name, x) if isinstance(x, bytes) else str(x) for x in arr.ravel().tolist()]
        datatype = "BYTES"
    else:
        datatype = DATATYPES.get(arr.dtype.name, "")
        if not datatype:
            raise TypeError(f"input '{name}': numpy dtype {arr.dtype} has no V2 datatype")
        data = arr.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def _text(name: str, raw: bytes) -> str:
    # V2 JSON carries BYTES elements as strings, so they must be text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"input '{name}': BYTES elements must be UTF-8 text in JSON") from None


def _flatten(name: str, value: Any) -> tuple[list[int], list[Any]]:
    """Shape and row-major elements of a rectangular nested list (a scalar has shape [])."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list | tuple):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[Any] = []

    def walk(x: Any, depth: int) -> None:
        if depth == len(shape):
            if isinstance(x, list | tuple):
                raise ValueError(f"input '{name}': nested lists must be rectangular")
            flat.append(x)
            return
        if not isinstance(x, list | tuple) or len(x) != shape[depth]:
            raise ValueError(f"input '{name}': nested lists must be rectangular")
        for item in x:
            walk(item, depth + 1)

    walk(value, 0)
    return shape, flat


def _list_datatype(name: str, flat: list[Any]) -> str:
    if not flat:
        return "FP32"
    if all(isinstance(x, bool) for x in flat):
        return "BOOL"
    if all(isinstance(x, str | bytes) for x in flat):
        return "BYTES"
    if all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat):
        return "INT64" if all(isinstance(x, int) for x in flat) else "FP32"
    kinds = sorted({type(x).__name__ for x in flat})
    raise TypeError(f"input '{name}': cannot mix element types {', '.join(kinds)} in one tensor")


def encode_inputs(
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """V2 `inputs` from `{name: value}` or from V2 tensor dicts (whose `data` may be an array;
    missing `shape`/`datatype` are filled in from it)."""
    if isinstance(inputs, Mapping):
        return [encode_tensor(str(name), value) for name, value in inputs.items()]
    out = []
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, Mapping) or "name" not in tensor:
            raise TypeError(f"inputs[{i}]: expected a tensor dict with a 'name'")
        t = dict(tensor)
        data = t.get("data")
        if _is_array(data) or "shape" not in t or "datatype" not in t:
            encoded = encode_tensor(str(t["name"]), data)
            # what the caller stated wins over what was inferred (e.g. FP64 data sent as FP32)
            t = {**encoded, **{k: v for k, v in t.items() if k != "data"},
                 "data": encoded["data"]}  # fmt: skip
        out.append(t)
    return out


def request_body(doc: Any) -> dict[str, Any]:
    """A V2 request body as is (`{"inputs": [...]}`), or one built from `{"INPUT": [[...]]}`."""
    if isinstance(doc, Mapping) and isinstance(doc.get("inputs"), list):
        return dict(doc)
    if isinstance(doc, Mapping) and doc:
        return {"inputs": encode_inputs(doc)}
    raise ValueError('expected {"inputs": [...]} or {"INPUT_NAME": [[...]]}')


def decode_outputs(body: Mapping[str, Any]) -> dict[str, Any]:
    """`{name: numpy array}` from a V2 response body (flat `data` lists without numpy)."""
    outputs = body.get("outputs") or []
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the SDK alone
        return {o["name"]: o.get("data") for o in outputs}
    result: dict[str, Any] = {}
    for o in outputs:
        shape = [int(d) for d in o.get("shape", [])]
        datatype = o.get("datatype", "")
        data = o.get("data", [])
        if datatype == "BYTES":
            arr = np.empty(len(data), dtype=object)
            arr[:] = data
        else:
            arr = np.asarray(data, dtype=DTYPES.get(datatype))
        result[o["name"]] = arr.reshape(shape)
    return result
