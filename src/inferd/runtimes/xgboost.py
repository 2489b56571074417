"""XGBoost boosters saved in the native `.json` / `.ubj` formats (data only, no pickle)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
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


class XGBoostRuntime(Runtime):
    """Runs a native XGBoost booster with `inplace_predict` (thread-safe, no DMatrix).

    One input, `input` (or the first input declared in model.yaml) FP32 [-1, num_features];
    one output `predict` FP32 whose shape is read at load from a one-row prediction
    ([-1] for regression and binary objectives, [-1, k] for `multi:softprob`).
    `model.yaml` parameters: `nthread` (default 1).
    """

    name = "xgboost"
    platform = "xgboost"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._booster: Any = None

    def load(self) -> None:
        try:
            import xgboost
        except ImportError:
            raise ModelLoadError(
                "the xgboost runtime needs xgboost: pip install 'inferd[xgboost]'"
            ) from None
        artifact = self.find_artifact(".json", ".ubj").absolute()
        nthread = int_parameter(self.spec.parameters, "nthread", 1)
        try:
            booster = xgboost.Booster(model_file=str(artifact))
            booster.set_param({"nthread": nthread})
            n_features = int(booster.num_features())
            probe = np.asarray(booster.inplace_predict(np.zeros((1, n_features), np.float32)))
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {artifact.name}: {_xgboost_message(exc, self.path)}"
            ) from None
        name = self.spec.inputs[0].name if self.spec.inputs else "input"
        self._inputs = (TensorSpec(name, "FP32", (-1, n_features)),)
        self._outputs = (TensorSpec("predict", "FP32", (-1, *probe.shape[1:])),)
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
            value = self._booster.inplace_predict(inputs[self._inputs[0].name])
        except Exception as exc:
            raise ModelExecutionError(_xgboost_message(exc, self.path)) from None
        return {"predict": np.asarray(value, dtype=np.float32)}

    def unload(self) -> None:
        self._booster = None


def _xgboost_message(exc: BaseException, path: Path) -> str:
    """XGBoost errors read "[12:00:00] /src/file.cc:123: reason" then a C++ stack trace."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return framework_message(RuntimeError(re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first)), path)
