"""scikit-learn estimators: `.skops` (safe, type-checked) or pickles when the model is trusted."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import ModelExecutionError, ModelLoadError, UntrustedArtifact
from inferd.core.spec import ModelSpec, TensorSpec
from inferd.core.trust import DATA_PACKAGES, SAFE_STDLIB_TYPES, touches_files_or_processes
from inferd.runtimes.base import Runtime, framework_message

_PICKLES = (".joblib", ".pkl", ".pickle")


class SklearnRuntime(Runtime):
    """Serves a fitted estimator's `predict` and, when it has one, `predict_proba`.

    `.skops` files are loaded with skops: every type skops does not trust by default must be
    listed in `parameters.trusted_types`; a model marked `trusted: true` may also use data classes
    (estimators, numpy/scipy types) skops does not know, never functions.
    `.joblib`/`.pkl`/`.pickle` can run arbitrary code when read, so they load only with
    `trusted: true`. One input, `input` (or the first input declared in model.yaml), a 2-D
    feature matrix; outputs `predict` [-1] and `predict_proba` [-1, n_classes].
    """

    name = "sklearn"
    platform = "sklearn"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None

    def load(self) -> None:
        artifact = self.find_artifact(".skops", *_PICKLES).absolute()
        model = (
            self._load_skops(artifact)
            if artifact.suffix == ".skops"
            else self._load_pickle(artifact)
        )
        if not callable(getattr(model, "predict", None)):
            raise ModelLoadError(
                f"{artifact.name} holds a {type(model).__name__}, which has no predict()"
            )
        self._adopt(model)

    @classmethod
    def from_estimator(cls, spec: ModelSpec, estimator: Any) -> SklearnRuntime:
        """A loaded runtime around an estimator object handed over in Python (no file)."""
        if not callable(getattr(estimator, "predict", None)):
            raise ModelLoadError(f"a {type(estimator).__name__} has no predict()")
        runtime = cls(spec, "1", Path("."))
        runtime._adopt(estimator)
        return runtime

    def _adopt(self, model: Any) -> None:
        self._inputs = (self._input_spec(model),)
        self._outputs = _output_specs(model)
        self._model = model

    def _load_skops(self, artifact: Path) -> Any:
        try:
            import skops.io as sio
        except ImportError:
            raise ModelLoadError(
                "the sklearn runtime needs skops: pip install 'inferd[sklearn]'"
            ) from None
        trusted = self.spec.parameters.get("trusted_types") or []
        if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
            raise ModelLoadError("parameter 'trusted_types' must be a list of type names")
        try:
            untrusted = sio.get_untrusted_types(file=artifact)
            missing = [t for t in untrusted if t not in trusted]
            if missing and self.spec.trusted:
                # `trusted: true` is an admin vouching for the owner: the file may use data
                # classes skops does not know, but never a callable (posix.system, builtins.exec,
                # numpy.load ...): those are admitted only when named in trusted_types.
                data = [t for t in missing if is_data_class(t)]
                trusted, missing = [*trusted, *data], [t for t in missing if t not in data]
            if missing:
                raise UntrustedArtifact(
                    f"{artifact.name} contains types skops does not trust: {', '.join(missing)}; "
                    "an admin (or model.yaml in the model repository) can list them in "
                    "parameters.trusted_types"
                )
            return sio.load(artifact, trusted=trusted)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {artifact.name}: {framework_message(exc, self.path)}"
            ) from None

    def _load_pickle(self, artifact: Path) -> Any:
        if not self.spec.trusted:
            raise UntrustedArtifact(
                f"{artifact.name} is a pickle, which can run arbitrary code when loaded; save the "
                "model with skops.io.dump, or set 'trusted: true' in model.yaml if you trust its "
                "author"
            )
        try:
            import joblib
        except ImportError:
            raise ModelLoadError(
                "the sklearn runtime needs joblib: pip install 'inferd[sklearn]'"
            ) from None
        try:
            return joblib.load(artifact)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {artifact.name}: {framework_message(exc, self.path)}"
            ) from None

    def _input_spec(self, model: Any) -> TensorSpec:
        n_features = getattr(model, "n_features_in_", None)
        width = int(n_features) if isinstance(n_features, int | np.integer) else -1
        if self.spec.inputs:
            declared = self.spec.inputs[0]
            return TensorSpec(declared.name, declared.datatype, (-1, width))
        return TensorSpec("input", "FP32", (-1, width))

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._model is None:
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        specs = {t.name: t for t in self._outputs}
        names = self.requested_outputs(outputs)
        x = inputs[self._inputs[0].name]
        result: dict[str, np.ndarray] = {}
        try:
            for name in names:
                value = np.asarray(getattr(self._model, name)(x))
                result[name] = _as_datatype(value, specs[name].datatype)
        except Exception as exc:
            raise ModelExecutionError(
                f"{type(exc).__name__}: {framework_message(exc, self.path)}"
            ) from None
        return result

    def unload(self) -> None:
        self._model = None


def _output_specs(model: Any) -> tuple[TensorSpec, ...]:
    """Output datatypes from fitted attributes, so no sample data is needed at load."""
    classes = getattr(model, "classes_", None)
    n_outputs = getattr(model, "n_outputs_", 1)
    if isinstance(classes, list):  # multi-output classifier: one class array per target
        dtypes = {_dtype_datatype(np.asarray(c).dtype) for c in classes}
        datatype = dtypes.pop() if len(dtypes) == 1 else "BYTES"
        return (TensorSpec("predict", datatype, (-1, len(classes))),)
    if classes is not None:
        datatype = _dtype_datatype(np.asarray(classes).dtype)
    elif _estimator_type(model) in {"clusterer", "outlier_detector"}:
        datatype = "INT64"
    else:
        datatype = "FP64"
    shape = (-1,) if not isinstance(n_outputs, int) or n_outputs <= 1 else (-1, n_outputs)
    specs = [TensorSpec("predict", datatype, shape)]
    if classes is not None and callable(getattr(model, "predict_proba", None)):
        specs.append(TensorSpec("predict_proba", "FP64", (-1, len(classes))))
    return tuple(specs)


def _estimator_type(model: Any) -> str | None:
    try:
        from sklearn.utils import get_tags

        return get_tags(model).estimator_type
    except Exception:
        return getattr(model, "_estimator_type", None)


def _dtype_datatype(dtype: np.dtype) -> str:
    if dtype.kind in "iub":
        return "INT64"
    if dtype.kind == "f":
        return "FP64"
    return "BYTES"


def _as_datatype(value: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in value.ravel()]
        return np.array(flat, dtype=object).reshape(value.shape)
    return value.astype(NUMPY_DTYPES[datatype], copy=False)


def is_data_class(type_name: str) -> bool:
    """Whether a type named in a skops file is a class of a data package (or a safe builtin type)
    — resolved here, in the worker, where importing scikit-learn, numpy or scipy modules is
    harmless. Modules of any other package are not imported: importing can itself run code."""
    if type_name in SAFE_STDLIB_TYPES:
        return True
    if type_name.split(".", 1)[0] not in DATA_PACKAGES or touches_files_or_processes(type_name):
        return False
    module_name, _, attr = type_name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception:
        return False
    return isinstance(obj, type)
