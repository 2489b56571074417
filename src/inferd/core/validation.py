"""Checks of a decoded request against a model's signature. Pure and cheap: on the hot path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferd.core.errors import InvalidInput
from inferd.core.spec import TensorSpec
from inferd.core.tensors import InferenceRequest, RequestedOutput


def check_inputs(
    model: str,
    request: InferenceRequest,
    inputs: dict[str, TensorSpec],
    max_batch_size: int,
) -> dict[str, np.ndarray]:
    """Return name -> array after checking names, datatypes, shapes and the batch size."""
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = inputs.get(tensor.name)
        if spec is None:
            expected = ", ".join(inputs) or "none"
            raise InvalidInput(
                f"unexpected inference input '{tensor.name}' for model '{model}'; "
                f"expected: {expected}"
            )
        if tensor.name in arrays:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{model}' expects '{spec.datatype}'"
            )
        shape = tensor.data.shape
        if len(shape) != len(spec.shape) or any(
            d != s and s != -1 for d, s in zip(shape, spec.shape, strict=False)
        ):
            raise InvalidInput(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. "
                f"Expected {_fmt(spec.shape)}, got {_fmt(shape)}"
            )
        if max_batch_size > 0 and shape and shape[0] > max_batch_size:
            raise InvalidInput(
                f"inference request batch-size must be <= {max_batch_size} for '{model}', "
                f"got {shape[0]} in input '{tensor.name}'"
            )
        arrays[tensor.name] = tensor.data
    for name, spec in inputs.items():
        if name not in arrays and not spec.optional:
            raise InvalidInput(f"expected input '{name}' for model '{model}' is missing")
    if max_batch_size > 0 and len(arrays) > 1:
        batch = {a.shape[0] for a in arrays.values() if a.ndim}
        if len(batch) > 1:
            raise InvalidInput("all inputs must have the same batch size (first dimension)")
    return arrays


def check_outputs(
    model: str, requested: Sequence[RequestedOutput] | None, outputs: dict[str, TensorSpec]
) -> list[str] | None:
    """Return the requested output names (None = all) after refusing unknown and duplicates."""
    if not requested:
        return None
    names: list[str] = []
    seen: set[str] = set()
    for out in requested:
        if out.name in seen:
            raise InvalidInput(f"duplicate requested output name '{out.name}'")
        if out.name not in outputs:
            raise InvalidInput(f"unexpected inference output '{out.name}' for model '{model}'")
        seen.add(out.name)
        names.append(out.name)
    return names


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
