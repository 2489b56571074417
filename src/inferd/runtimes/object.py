"""A model object handed over in Python (`inferd.serve(models={...})`), not loaded from a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core.errors import ModelExecutionError, ModelLoadError
from inferd.core.spec import ModelSpec, TensorSpec
from inferd.runtimes.base import Runtime


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
        return self.spec.batched(self.spec.inputs), self.spec.batched(self.spec.outputs)

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
