"""LightGBM boosters saved in the native text format (data only, no pickle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inferd.core.errors import ModelExecutionError, ModelLoadError
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import (
    Runtime,
    check_output_names,
    framework_message,
    int_parameter,
)


class LightGBMRuntime(Runtime):
    """Runs a native LightGBM text model with `Booster.predict`.

    One input, `input` (or the first input declared in model.yaml) FP32 [-1, num_feature]
    (FP64 works as well); one output `predict` FP64 whose shape is read at load from a
    one-row prediction ([-1], or [-1, k] for multiclass). `model.yaml` parameters:
    `num_threads` (default 1).
    """

    name = "lightgbm"
    platform = "lightgbm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._booster: Any = None
        self._num_threads = 1

    def load(self) -> None:
        try:
            import lightgbm
        except ImportError:
            raise ModelLoadError(
                "the lightgbm runtime needs lightgbm: pip install 'inferd[lightgbm]'"
            ) from None
        artifact = self.find_artifact(".txt", ".lgb", ".model").absolute()
        self._num_threads = int_parameter(self.spec.parameters, "num_threads", 1)
        try:
            booster = lightgbm.Booster(model_file=str(artifact))
            n_features = int(booster.num_feature())
            probe = np.asarray(
                booster.predict(np.zeros((1, n_features)), num_threads=self._num_threads)
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {artifact.name}: {framework_message(exc, self.path)}"
            ) from None
        if self.spec.inputs:
            declared = self.spec.inputs[0]
            datatype = declared.datatype if declared.datatype in {"FP32", "FP64"} else "FP32"
            self._inputs = (TensorSpec(declared.name, datatype, (-1, n_features)),)
        else:
            self._inputs = (TensorSpec("input", "FP32", (-1, n_features)),)
        self._outputs = (TensorSpec("predict", "FP64", (-1, *probe.shape[1:])),)
        self._booster = booster

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._booster is None:
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        check_output_names(self.spec.name, outputs, ["predict"])
        try:
            value = self._booster.predict(
                inputs[self._inputs[0].name], num_threads=self._num_threads
            )
        except Exception as exc:
            raise ModelExecutionError(framework_message(exc, self.path)) from None
        return {"predict": np.asarray(value, dtype=np.float64)}

    def unload(self) -> None:
        self._booster = None
