"""ONNX models on onnxruntime (CUDA when the installed build offers it, else CPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from inferd.core.errors import InvalidInput, ModelExecutionError, ModelLoadError
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import Runtime, framework_message, int_parameter

if TYPE_CHECKING:
    import onnxruntime

#: onnxruntime type string -> V2 datatype.
ONNX_DATATYPES: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


class OnnxRuntime(Runtime):
    """Runs one `.onnx` file with onnxruntime.

    `model.yaml` parameters: `intra_op_threads`, `inter_op_threads` (ints),
    `graph_optimization_level` (disable|basic|extended|all, default all) and
    `execution_mode` (sequential|parallel). Only tensor inputs and outputs are served: a
    sequence/map output (sklearn's ZipMap) is refused at load.
    """

    name = "onnx"
    platform = "onnx_onnxv1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session: onnxruntime.InferenceSession | None = None
        self._bytes_inputs: frozenset[str] = frozenset()
        self._bytes_outputs: frozenset[str] = frozenset()

    def load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(
                "the onnx runtime needs onnxruntime: pip install 'inferd[onnx]'"
            ) from None
        artifact = self.find_artifact(".onnx").absolute()
        options = self._session_options(ort)
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(artifact), sess_options=options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {artifact.name}: {framework_message(exc, self.path)}"
            ) from None
        self._inputs = tuple(_tensor_spec(arg, "input") for arg in session.get_inputs())
        self._outputs = tuple(_tensor_spec(arg, "output") for arg in session.get_outputs())
        self._bytes_inputs = frozenset(t.name for t in self._inputs if t.datatype == "BYTES")
        self._bytes_outputs = frozenset(t.name for t in self._outputs if t.datatype == "BYTES")
        self._session = session

    def _session_options(self, ort: Any) -> Any:
        params = self.spec.parameters
        options = ort.SessionOptions()
        for key, attr in (
            ("intra_op_threads", "intra_op_num_threads"),
            ("inter_op_threads", "inter_op_num_threads"),
        ):
            if params.get(key) is not None:
                setattr(options, attr, int_parameter(params, key))
        if params.get("intra_op_threads") is None:
            # Left at 0, onnxruntime sizes its pool by the machine and pins threads to cores
            # outside this process's CPU set (taskset, cgroup cpusets); an explicit count stays
            # inside it.
            options.intra_op_num_threads = usable_cpus()
        level = str(params.get("graph_optimization_level", "all")).lower()
        if level not in _OPT_LEVELS:
            raise ModelLoadError(
                f"parameter 'graph_optimization_level' must be one of {', '.join(_OPT_LEVELS)}"
            )
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        if params.get("execution_mode") is not None:
            mode = str(params["execution_mode"]).lower()
            if mode not in _EXEC_MODES:
                raise ModelLoadError("parameter 'execution_mode' must be sequential or parallel")
            options.execution_mode = getattr(ort.ExecutionMode, _EXEC_MODES[mode])
        return options

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._session is None:
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        names = self.requested_outputs(outputs)
        feed = {
            name: _to_ort_strings(array) if name in self._bytes_inputs else array
            for name, array in inputs.items()
        }
        try:
            results = self._session.run(names, feed)
        except Exception as exc:
            raise ModelExecutionError(framework_message(exc, self.path)) from None
        return {
            name: _to_bytes(np.asarray(value)) if name in self._bytes_outputs else np.asarray(value)
            for name, value in zip(names, results, strict=True)
        }

    def unload(self) -> None:
        self._session = None


def _tensor_spec(arg: Any, kind: str) -> TensorSpec:
    datatype = ONNX_DATATYPES.get(arg.type)
    if datatype is None:
        if not str(arg.type).startswith("tensor("):
            hint = (
                " (sklearn-onnx's ZipMap: convert with options={'zipmap': False})"
                if kind == "output" and "map(" in str(arg.type)
                else ""
            )
            raise ModelLoadError(
                f"{kind} '{arg.name}' has type {arg.type}, not a tensor; only tensor inputs and "
                f"outputs can be served{hint}"
            )
        raise ModelLoadError(f"{kind} '{arg.name}' has unsupported element type {arg.type}")
    # Symbolic ('batch') and unknown (None) dims are variable.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)


def _to_ort_strings(array: np.ndarray) -> np.ndarray:
    """ORT string tensors want str elements; it would str() a bytes object into "b'...'"."""
    if array.dtype.kind == "U":
        return array
    try:
        flat = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    except UnicodeDecodeError:
        raise InvalidInput("a BYTES input for an ONNX string tensor must be UTF-8") from None
    return np.array(flat, dtype=object).reshape(array.shape)


def _to_bytes(array: np.ndarray) -> np.ndarray:
    flat = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
