"""Triton's "simple_string": decimal integers as text in, their sum and difference as text out."""

from __future__ import annotations

from typing import Any

import numpy as np


class Model:
    """Adds and subtracts two BYTES tensors of decimal integers, element by element."""

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, Any]:
        a = _integers(inputs["INPUT0"])
        b = _integers(inputs["INPUT1"])
        # Returning str arrays is fine: the python runtime hands them back as BYTES.
        return {"OUTPUT0": (a + b).astype(str), "OUTPUT1": (a - b).astype(str)}


def _integers(array: np.ndarray) -> np.ndarray:
    values = [int(x.decode() if isinstance(x, bytes) else x) for x in array.ravel()]
    return np.array(values, dtype=np.int64).reshape(array.shape)
