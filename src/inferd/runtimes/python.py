"""User-written Python models (`model.py`), like Triton's Python backend.

`model.py` is TRUSTED CODE: it runs as soon as it is loaded, as a Triton Python backend model
does. This runtime itself checks nothing; the worker process it runs in is what contains it (an
allow-listed environment, an unprivileged user when the server is root, no network for uploaded
models: docs/model-repository.md, "Worker isolation"). That is not a sandbox against a determined
author: only serve code from authors you trust (uploads need an owner an admin marked trusted).

The file defines a class `Model`:

    class Model:
        def load(self, context):          # optional; `load(self)` works too
            ...
        def infer(self, inputs, parameters):
            return {"OUTPUT0": ...}       # name -> numpy array or array-like
        def unload(self):                 # optional
            ...

`inputs` maps names to numpy arrays (BYTES are object arrays of `bytes`). Outputs may be
numpy arrays, lists or scalars; strings come back as BYTES. model.yaml must declare the
inputs and outputs (shapes exclude the batch dim when `max_batch_size > 0`).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import InvalidInput, ModelExecutionError, ModelLoadError
from inferd.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a user model's `load(context)` receives."""

    name: str
    version: str
    #: The version directory (artifacts next to model.py live here or in its parent).
    path: Path
    #: `parameters` from model.yaml.
    parameters: dict[str, Any] = field(default_factory=dict)


class PythonRuntime(Runtime):
    """Imports `model.py` (version directory first, else the model directory) and calls `Model`."""

    name = "python"
    platform = "python"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._module: ModuleType | None = None

    def load(self) -> None:
        if not self.spec.inputs or not self.spec.outputs:
            raise ModelLoadError("python models must declare 'inputs' and 'outputs' in model.yaml")
        source = self.path / "model.py"
        if not source.is_file():
            source = self.path.parent / "model.py"
        if not source.is_file():
            raise ModelLoadError(f"no model.py in version {self.version} or its model directory")
        module = self._import(source)
        cls = getattr(module, "Model", None)
        if not inspect.isclass(cls):
            self._forget(module)
            raise ModelLoadError("model.py must define a class named 'Model'")
        context = ModelContext(self.spec.name, self.version, self.path, dict(self.spec.parameters))
        try:
            model = cls()
            load = getattr(model, "load", None)
            if callable(load) and _takes_positional(load):
                load(context)
            elif callable(load):
                load()
        except Exception as exc:
            self._forget(module)
            raise ModelLoadError(f"Model failed to load: {type(exc).__name__}: {exc}") from None
        if not callable(getattr(model, "infer", None)):
            self._forget(module)
            raise ModelLoadError("the Model class in model.py has no infer(inputs, parameters)")
        self._inputs = self.spec.batched(self.spec.inputs)
        self._outputs = self.spec.batched(self.spec.outputs)
        self._module, self._model = module, model

    def _import(self, source: Path) -> ModuleType:
        # A unique name: two models (or two versions of one) may both be called model.py.
        slug = re.sub(r"\W", "_", f"{self.spec.name}_{self.version}")
        module_name = f"inferd_user_model_{slug}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, source)
        if spec is None or spec.loader is None:
            raise ModelLoadError("model.py cannot be imported")
        module = importlib.util.module_from_spec(spec)
        # Registered so dataclasses, pickle and typing inside model.py can find their module.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            self._forget(module)
            raise ModelLoadError(
                f"model.py failed to import: {type(exc).__name__}: {exc}"
            ) from None
        return module

    @staticmethod
    def _forget(module: ModuleType) -> None:
        sys.modules.pop(module.__name__, None)

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._model is None:
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        specs = {t.name: t for t in self._outputs}
        wanted = self.requested_outputs(outputs)
        try:
            result = self._model.infer(inputs, parameters or {})
        except (InvalidInput, ModelExecutionError):
            raise
        except Exception as exc:
            raise ModelExecutionError(f"{type(exc).__name__}: {exc}") from None
        if not hasattr(result, "keys"):
            raise ModelExecutionError(
                f"Model.infer returned a {type(result).__name__}, not a dict of outputs"
            )
        out = {}
        for name in wanted:
            if name not in result:
                raise ModelExecutionError(f"Model.infer did not return output '{name}'")
            out[name] = _to_array(result[name], specs[name].datatype, name)
        return out

    def unload(self) -> None:
        model, module = self._model, self._module
        self._model = self._module = None
        try:
            if model is not None and callable(getattr(model, "unload", None)):
                model.unload()
        finally:
            if module is not None:
                self._forget(module)


def _takes_positional(method: Any) -> bool:
    """Whether a bound method accepts one positional argument (the context)."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in kinds or p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def _to_array(value: Any, datatype: str, name: str) -> np.ndarray:
    """User values as numpy: strings become object arrays of bytes, numbers the declared type."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if datatype == "BYTES" or array.dtype.kind in "OSU":
        if datatype != "BYTES":
            raise ModelExecutionError(f"output '{name}' is declared {datatype} but holds strings")
        flat = [
            v
            if isinstance(v, bytes)
            else v.encode("utf-8")
            if isinstance(v, str)
            else str(v).encode()
            for v in array.ravel().tolist()
        ]
        return np.array(flat, dtype=object).reshape(array.shape)
    target = NUMPY_DTYPES[datatype]
    if array.dtype != target:
        if not np.can_cast(array.dtype, target, "same_kind"):
            raise ModelExecutionError(
                f"output '{name}' is declared {datatype} but Model.infer returned {array.dtype}"
            )
        array = array.astype(target)
    return array
