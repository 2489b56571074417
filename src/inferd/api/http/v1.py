"""KServe V1 (TF-Serving style) predict: `instances` or `inputs` in, `predictions` out."""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.api.http.v2codec import decode_json_data, loads
from inferd.core.errors import InvalidInput
from inferd.core.spec import TensorSpec
from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor


def _tensor(spec: TensorSpec, data: Any) -> Tensor:
    try:
        shape = tuple(np.shape(data))
    except ValueError:
        raise InvalidInput(f"input '{spec.name}': instances are ragged") from None
    return Tensor(spec.name, spec.datatype, decode_json_data(spec.name, spec.datatype, data, shape))


def decode_predict(body: bytes, inputs: tuple[TensorSpec, ...]) -> InferenceRequest:
    """Map `{"instances": [...]}` (rows) or `{"inputs": ...}` (columns) onto the model inputs."""
    doc = loads(body)
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    if "instances" in doc:
        data, field = doc["instances"], "instances"
    elif "inputs" in doc:
        data, field = doc["inputs"], "inputs"
    else:
        raise InvalidInput("request must have 'instances' or 'inputs'")
    by_name = {t.name: t for t in inputs}
    if isinstance(data, dict):  # columnar: {"input_name": values}
        unknown = sorted(set(data) - set(by_name))
        if unknown:
            raise InvalidInput(f"'{field}' names unknown input(s): {', '.join(unknown)}")
        return InferenceRequest([_tensor(by_name[k], v) for k, v in data.items()])
    if not isinstance(data, list) or not data:
        raise InvalidInput(f"'{field}' must be a non-empty list")
    if all(isinstance(row, dict) for row in data):  # rows of named inputs
        names = set().union(*data)
        unknown = sorted(names - set(by_name))
        if unknown:
            raise InvalidInput(f"'{field}' names unknown input(s): {', '.join(unknown)}")
        cols = {n: [row.get(n) for row in data] for n in names}
        return InferenceRequest([_tensor(by_name[n], v) for n, v in cols.items()])
    if len(inputs) != 1:
        raise InvalidInput(
            f"model has {len(inputs)} inputs: give each instance as an object keyed by input name"
        )
    return InferenceRequest([_tensor(inputs[0], data)])


def _plain(t: Tensor) -> Any:
    if t.datatype == "BYTES":
        return np.vectorize(
            lambda x: x.decode(errors="replace") if isinstance(x, bytes) else str(x),
            otypes=[object],
        )(t.data).tolist()
    return t.data.tolist()


def encode_predictions(response: InferenceResponse) -> dict[str, Any]:
    """One output (or the one named `predict`) becomes the list; several become rows of objects."""
    outs = {t.name: t for t in response.outputs}
    main = outs.get("predict") or (response.outputs[0] if len(outs) == 1 else None)
    if main is not None:
        return {"predictions": _plain(main)}
    cols = {n: _plain(t) for n, t in outs.items()}
    rows = min(len(v) if isinstance(v, list) else 1 for v in cols.values())
    return {
        "predictions": [
            {n: (v[i] if isinstance(v, list) else v) for n, v in cols.items()} for i in range(rows)
        ]
    }
