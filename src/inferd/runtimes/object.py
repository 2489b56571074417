"""A model object handed over in Python (`inferd.serve(models={...})`), not loaded from a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core.errors import ModelExecutionError, ModelLoadError
from inferd.core.spec import ModelSpec, TensorSpec
from inferd.runtimes.base import Runtime


def _full(specs: tuple[TensorSpec, ...], mbs: int) -> tuple[TensorSpec, ...]:
    if mbs <= 0:
        return specs
    return tuple(TensorSpec(t.name, t.datatype, (-1, *t.shape), t.optional) for t in specs)


class ObjectRuntime(Runtime):
    """Wraps an object with `infer(inputs, parameters) -> dict`, or a scikit-learn estimator."""

    name = "object"
    platform = "python"

    def __init__(self, spec: ModelSpec, obj: Any) -> None:
        super().__init__(spec, "1", Path("."))
        self.obj = obj
        self._delegate: Runtime | None = None

    def load(self) -> None:
        if hasattr(self.obj, "infer"):
            if not self.spec.inputs or not self.spec.outputs:
                raise ModelLoadError(
                    f"model '{self.spec.name}': give 'inputs' and 'outputs' for a Python object"
                )
            load = getattr(self.obj, "load", None)
            if callable(load):
                load()
            return
        if hasattr(self.obj, "predict"):
            from inferd.runtimes.sklearn import SklearnRuntime

            self._delegate = SklearnRuntime.from_estimator(self.spec, self.obj)
            self.platform = self._delegate.platform
            return
        raise ModelLoadError(
            f"model '{self.spec.name}': an object needs an infer() or predict() method"
        )

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        if self._delegate is not None:
            return self._delegate.signature()
        mbs = self.spec.max_batch_size
        return _full(self.spec.inputs, mbs), _full(self.spec.outputs, mbs)

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._delegate is not None:
            return self._delegate.infer(inputs, outputs, parameters)
        result = self.obj.infer(inputs, parameters or {})
        if not isinstance(result, dict):
            raise ModelExecutionError("infer() must return a dict of output name -> array")
        return {k: np.asarray(v) for k, v in result.items()}
