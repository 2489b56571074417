"""What every fuzz target shares: coverage instrumentation, the atheris entry point, a reader
for structured inputs, and the checks that decoded requests are what the engine expects.

A target is `tests/fuzz/fuzz_<name>.py` with a `test_one_input(data: bytes)` that raises only
when an invariant breaks; its seed corpus is `tests/fuzz/corpus/<name>/` and its optional
libFuzzer dictionary `tests/fuzz/<name>.dict`. Run as a script it fuzzes (atheris/libFuzzer
flags on the command line); imported, it is a plain function that `test_fuzz.py` replays the
corpus through, so the regression inputs run even where atheris does not install.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def instrument(module: str, *packages: str) -> Iterator[None]:
    """Instrument `packages` for coverage while the block imports them, only when `module` is
    the script being fuzzed (importing a target for a replay must not need atheris)."""
    if module != "__main__":
        yield
        return
    import atheris

    with atheris.instrument_imports(include=list(packages)):
        yield


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz `test_one_input` with the libFuzzer flags given on the command line (never returns)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


class Reader:
    """Consumes a fuzz input as small integers and byte strings; past the end it yields zeros
    and empty strings, so every input maps to some structure."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, n: int) -> int:
        """An integer of `n` bytes, big-endian."""
        value = 0
        for _ in range(n):
            value = value << 8 | self.u8()
        return value

    def blob(self, max_len: int, width: int = 1) -> bytes:
        """A length of `width` bytes (modulo `max_len + 1`), then that many bytes."""
        n = self.uint(width) % (max_len + 1)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def done(self) -> bool:
        return self.pos >= len(self.data)


def check_request(request: Any) -> None:
    """A decoded request holds what the engine relies on: every input an ndarray of its
    datatype's numpy dtype, BYTES elements as `bytes`."""
    import numpy as np

    from inferd.core.datatypes import NUMPY_DTYPES
    from inferd.core.tensors import InferenceRequest

    assert isinstance(request, InferenceRequest), type(request)
    assert request.inputs, "a request without inputs was accepted"
    for t in request.inputs:
        assert isinstance(t.data, np.ndarray), (t.name, type(t.data))
        assert t.data.dtype == NUMPY_DTYPES[t.datatype], (t.name, t.datatype, t.data.dtype)
        if t.datatype == "BYTES":
            assert all(type(x) is bytes for x in t.data.ravel()), t.name


def same_tensor(a: Any, b: Any) -> bool:
    """Equal name, datatype, shape and values (NaNs equal, bit patterns of floats aside)."""
    import numpy as np

    if (a.name, a.datatype, a.data.shape) != (b.name, b.datatype, b.data.shape):
        return False
    if a.datatype == "BYTES":
        return bool(a.data.ravel().tolist() == b.data.ravel().tolist())
    return bool(np.array_equal(a.data, b.data, equal_nan=a.data.dtype.kind == "f"))
