"""Open Inference Protocol datatypes and their numpy / Triton-config equivalents."""

from __future__ import annotations

import numpy as np

from inferd.core.errors import InvalidInput

#: V2 datatype name -> numpy dtype. BYTES maps to object arrays holding `bytes`.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

#: Little-endian wire dtypes for the binary extension (numpy default order may differ).
WIRE_DTYPES: dict[str, np.dtype] = {
    k: (v.newbyteorder("<") if v.kind in "iuf" else v) for k, v in NUMPY_DTYPES.items()
}

_FROM_NUMPY: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items()}

#: Bytes per element; BYTES is variable and absent.
ITEMSIZE: dict[str, int] = {k: v.itemsize for k, v in NUMPY_DTYPES.items() if k != "BYTES"}

DATATYPES = frozenset(NUMPY_DTYPES)


def numpy_dtype(datatype: str) -> np.dtype:
    """Return the numpy dtype of a V2 datatype, or raise InvalidInput naming it."""
    try:
        return NUMPY_DTYPES[datatype]
    except (KeyError, TypeError):
        raise InvalidInput(f"unsupported datatype '{datatype}'") from None


def datatype_of(array: np.ndarray) -> str:
    """Return the V2 datatype for a numpy array (strings and objects are BYTES)."""
    dt = array.dtype
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NUMPY[dt.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dt} has no V2 datatype") from None


def config_type(datatype: str) -> str:
    """Triton model-config spelling: TYPE_FP32, TYPE_STRING for BYTES."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def from_config_type(name: str) -> str:
    """Accept a Triton config type (TYPE_FP32, TYPE_STRING) or a V2 name."""
    if name.startswith("TYPE_"):
        name = name[5:]
        if name == "STRING":
            return "BYTES"
    if name not in DATATYPES:
        raise InvalidInput(f"unsupported datatype '{name}'")
    return name
