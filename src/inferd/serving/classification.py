"""Triton's classification extension: an output turned into its top-k "score:index[:label]"."""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.core.errors import InvalidInput
from inferd.core.tensors import Tensor


def classify(name: str, scores: np.ndarray, k: Any, labels: tuple[str, ...]) -> Tensor:
    """Top-k per batch row (the last axis holds the class scores), as BYTES strings."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"output '{name}': 'classification' must be a positive integer")
    if scores.dtype.kind not in "fiub":
        raise InvalidInput(f"output '{name}' is not numeric and cannot be classified")
    rows = scores.reshape(-1, scores.shape[-1]) if scores.ndim else scores.reshape(1, 1)
    k = min(k, rows.shape[-1])
    top = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
    items: list[bytes] = []
    for r, idx in enumerate(top):
        for i in idx:
            text = f"{float(rows[r, i]):f}:{int(i)}"
            if i < len(labels):
                text += f":{labels[i]}"
            items.append(text.encode())
    shape = (*scores.shape[:-1], k) if scores.ndim > 1 else (k,)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return Tensor(name, "BYTES", arr.reshape(shape))
