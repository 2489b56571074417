"""PyTorch models: TorchScript archives (`.pt`) and `torch.export` programs (`.pt2`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inferd.core.datatypes import NUMPY_DTYPES, datatype_of
from inferd.core.errors import InvalidInput, ModelExecutionError, ModelLoadError
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import Runtime, framework_message

if TYPE_CHECKING:
    import torch


class TorchRuntime(Runtime):
    """Runs a TorchScript module (`torch.jit.save`) or an exported program (`torch.export.save`).

    TorchScript carries no tensor shapes, so `inputs` must be declared in model.yaml; they are
    passed positionally in the declared order. Shapes in model.yaml exclude the batch dim when
    `max_batch_size > 0` (as Triton's dims). Outputs are the declared ones, else `OUTPUT__0`,
    `OUTPUT__1`, ... (a tensor is one output, a tuple/list several, a dict is keyed by name).
    Output datatypes and ranks are learned at load from forwards on zero tensors.
    `model.yaml` parameters: `device` (default cuda when available, else cpu), `num_threads`
    (sets torch's process-wide intra-op thread count).
    """

    name = "torch"
    platform = "pytorch_torchscript"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module: Any = None
        self._device = "cpu"
        self._keys: list[str] = []  # the forward's result keys, in `_outputs` order

    def load(self) -> None:
        if not self.spec.inputs:
            raise ModelLoadError(
                "torch models need their 'inputs' declared in model.yaml (name, datatype, shape): "
                "a TorchScript or exported module carries no input signature"
            )
        try:
            import torch
        except ImportError:
            raise ModelLoadError(
                "the torch runtime needs torch: pip install 'inferd[torch]'"
            ) from None
        artifact = self.find_artifact(".pt", ".pt2", ".torchscript").absolute()
        self._device = self._pick_device(torch)
        threads = self.spec.parameters.get("num_threads")
        if threads is not None:
            if isinstance(threads, bool) or not str(threads).isdigit() or int(threads) < 1:
                raise ModelLoadError("parameter 'num_threads' must be a positive integer")
            torch.set_num_threads(int(threads))
        batched = self.spec.max_batch_size > 0
        self._inputs = tuple(
            TensorSpec(t.name, t.datatype, (-1, *t.shape) if batched else t.shape, t.optional)
            for t in self.spec.inputs
        )
        for t in self._inputs:
            if t.datatype == "BYTES":
                raise ModelLoadError(f"input '{t.name}': torch models take no BYTES tensors")
        self._module = self._load_module(torch, artifact)
        self._outputs = self._probe_outputs(torch)

    def _pick_device(self, torch: Any) -> str:
        default = "cuda" if torch.cuda.is_available() else "cpu"
        device = str(self.spec.parameters.get("device", default))
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            raise ModelLoadError(f"parameter 'device' '{device}' is not a torch device") from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"parameter 'device' is '{device}' but CUDA is not available")
        return device

    def _load_module(self, torch: Any, artifact: Path) -> Any:
        try:
            if artifact.suffix == ".pt2":
                # One class serves both formats; the platform string is per instance.
                self.platform = "pytorch_exported"
                module = torch.export.load(str(artifact)).module().to(self._device)
            else:
                module = torch.jit.load(str(artifact), map_location=self._device)
                module.eval()
        except Exception as exc:
            hint = ""
            if artifact.suffix != ".pt2" and "constants.pkl" in str(exc):
                hint = (
                    " (not a TorchScript archive: save with torch.jit.save, or torch.export.save "
                    "to a .pt2 file; pickled modules from torch.save are not loaded)"
                )
            reason = framework_message(exc, self.path).splitlines()[0]
            raise ModelLoadError(f"cannot load {artifact.name}: {reason}{hint}") from None
        return module

    def _probe_outputs(self, torch: Any) -> tuple[TensorSpec, ...]:
        """Learn output names, datatypes and shapes from forwards on zeros (variable dims 1, 2)."""
        try:
            first = self._forward(torch, self._examples(1))
        except Exception as exc:
            raise ModelLoadError(
                f"a forward on zero tensors shaped as the declared inputs failed: "
                f"{_last_line(framework_message(exc, self.path))}"
            ) from None
        try:
            # A second probe with variable dims at 2 tells which output dims follow them.
            second = self._forward(torch, self._examples(2))
        except Exception:
            second = None
        declared = self.spec.outputs
        if declared and len(declared) != len(first):
            raise ModelLoadError(
                f"model.yaml declares {len(declared)} output(s) but the model returns {len(first)}"
            )
        keys = list(first)
        if declared and set(keys) == {t.name for t in declared}:
            keys = [t.name for t in declared]  # a dict output, matched by name
        self._keys = keys
        specs = []
        for i, key in enumerate(keys):
            value = first[key]
            datatype = datatype_of(value)
            if declared:
                spec = declared[i]
                if spec.datatype != datatype:
                    raise ModelLoadError(
                        f"output '{spec.name}' is declared {spec.datatype} but the model returns "
                        f"{datatype}"
                    )
                batched = self.spec.max_batch_size > 0
                specs.append(
                    TensorSpec(spec.name, datatype, (-1, *spec.shape) if batched else spec.shape)
                )
                continue
            other = None if second is None else second.get(key)
            shape = tuple(
                -1 if other is None or other.ndim != value.ndim or other.shape[j] != d else d
                for j, d in enumerate(value.shape)
            )
            specs.append(TensorSpec(key, datatype, shape))
        return tuple(specs)

    def _examples(self, fill: int) -> list[np.ndarray]:
        return [
            np.zeros(tuple(fill if d == -1 else d for d in t.shape), dtype=NUMPY_DTYPES[t.datatype])
            for t in self._inputs
        ]

    def _forward(self, torch: Any, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [
            torch.from_numpy(a if a.flags.writeable else a.copy()).to(self._device) for a in arrays
        ]
        with torch.inference_mode():
            result = self._module(*tensors)
        if isinstance(result, dict):
            items = [(str(k), v) for k, v in result.items()]
        elif isinstance(result, list | tuple):
            items = [(f"OUTPUT__{i}", v) for i, v in enumerate(result)]
        else:
            items = [("OUTPUT__0", result)]
        out = {}
        for key, value in items:
            if not isinstance(value, torch.Tensor):
                raise ModelExecutionError(
                    f"the model returned a {type(value).__name__}, not a tensor, for output {key}"
                )
            out[key] = _to_numpy(torch, value)
        return out

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._module is None:
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        import torch

        names = {t.name: key for t, key in zip(self._outputs, self._keys, strict=True)}
        wanted = self.requested_outputs(outputs)
        try:
            arrays = [inputs[t.name] for t in self._inputs]
        except KeyError as exc:
            raise InvalidInput(f"missing input {exc} for model '{self.spec.name}'") from None
        try:
            result = self._forward(torch, arrays)
            return {name: result[names[name]] for name in wanted}
        except (ModelExecutionError, InvalidInput):
            raise
        except KeyError as exc:
            raise ModelExecutionError(f"the model did not return output {exc}") from None
        except Exception as exc:
            raise ModelExecutionError(_last_line(framework_message(exc, self.path))) from None

    def unload(self) -> None:
        self._module = None
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _to_numpy(torch: Any, value: torch.Tensor) -> np.ndarray:
    value = value.detach()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16; FP32 holds it exactly
        value = value.float()
    return np.asarray(value.cpu().numpy())


def _last_line(text: str) -> str:
    """TorchScript errors end with the real cause after an interpreter traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text
