"""Wire-neutral tensor bytes, shared by the REST binary extension and gRPC raw contents.

Little-endian, row-major; each BYTES element is a 4-byte little-endian length, then its bytes.
Decoding never allocates from a declared size: element counts are checked against the bytes
actually received.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from inferd.core.datatypes import ITEMSIZE, NUMPY_DTYPES, WIRE_DTYPES
from inferd.core.errors import InvalidInput
from inferd.core.tensors import Tensor

U32 = struct.Struct("<I")


def element_count(shape: Iterable[int]) -> int:
    """prod(shape) with Python ints: no overflow, compared with data actually received."""
    n = 1
    for d in shape:
        n *= d
    return n


def decode_binary(name: str, datatype: str, buf: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one tensor from its raw bytes (little-endian; BYTES length-prefixed)."""
    expected = element_count(shape)
    if datatype == "BYTES":
        items: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            if pos + 4 > end:
                raise InvalidInput(f"input '{name}': truncated BYTES element length")
            (n,) = U32.unpack_from(buf, pos)
            pos += 4
            if pos + n > end:
                raise InvalidInput(f"input '{name}': BYTES element runs past its binary data")
            items.append(bytes(buf[pos : pos + n]))
            pos += n
            if len(items) > expected:
                break
        if len(items) != expected:
            raise InvalidInput(
                f"input '{name}': unexpected number of BYTES elements; shape {list(shape)} "
                f"expects {expected}, got {len(items)}"
            )
        arr = np.empty(expected, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    size = expected * ITEMSIZE[datatype]
    if size != len(buf):
        raise InvalidInput(
            f"input '{name}': input byte size mismatch; shape {list(shape)} of {datatype} "
            f"expects {size} bytes, got {len(buf)}"
        )
    arr = np.frombuffer(buf, dtype=WIRE_DTYPES[datatype]).reshape(shape)
    return arr.astype(NUMPY_DTYPES[datatype], copy=False)


def tensor_bytes(t: Tensor) -> bytes:
    """Raw bytes of a tensor (little-endian; BYTES with uint32 length prefixes)."""
    if t.datatype == "BYTES":
        parts = []
        for item in t.data.ravel():
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(t.data, dtype=WIRE_DTYPES[t.datatype]).tobytes()
