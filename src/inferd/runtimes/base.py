"""The one interface every framework runtime implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inferd.core.errors import ModelLoadError, UntrustedArtifact
from inferd.core.spec import ModelSpec, TensorSpec


class Runtime(ABC):
    """Loads one model version and runs it on numpy arrays.

    Contract:
    - `__init__` stores arguments only; `load()` imports the framework (lazily) and reads the
      artifact from `path` (the version directory). Raise `ModelLoadError` with a reason.
    - `signature()` returns (inputs, outputs) with FULL shapes, batch dimension included
      (-1 for variable). The engine prefers what `model.yaml` declares when it declares it.
    - `infer()` takes arrays already validated against the signature (BYTES are object arrays
      of `bytes`) and returns name -> array. `outputs` is the requested subset or None (all).
      It runs in a worker thread or process, never on the event loop.
    """

    #: Registry name used in `model.yaml` (`runtime: onnx`).
    name: ClassVar[str]
    #: Informational platform string for metadata (`onnx_onnxv1`, `pytorch_torchscript`, ...).
    platform: str = ""

    def __init__(self, spec: ModelSpec, version: str, path: Path) -> None:
        self.spec = spec
        self.version = version
        self.path = path

    @abstractmethod
    def load(self) -> None:
        """Import the framework and load the artifact."""

    #: Set by the replica: long-running runtimes call it with (done, total) as they progress
    #: (e.g. denoising steps); it may be called from the runtime's own thread.
    progress_hook: Callable[[int, int], None] | None = None

    #: Set by `load()`: the signature `signature()` reports.
    _inputs: tuple[TensorSpec, ...] = ()
    _outputs: tuple[TensorSpec, ...] = ()

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs as the artifact describes them (full shapes)."""
        return self._inputs, self._outputs

    @abstractmethod
    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model."""

    def requested_outputs(self, outputs: Sequence[str] | None) -> list[str]:
        """The output names to compute: all when `outputs` is None, else `outputs` (checked)."""
        names = [t.name for t in self._outputs]
        if outputs is None:
            return names
        check_output_names(self.spec.name, outputs, names)
        return list(outputs)

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default drops references."""

    def find_artifact(self, *suffixes: str) -> Path:
        """The single file in the version directory with one of `suffixes` (e.g. '.onnx')."""
        found = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix in suffixes)
        if not found:
            raise ModelLoadError(f"no {'/'.join(suffixes)} file in version {self.version}")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ModelLoadError(f"several candidate artifacts in version {self.version}: {names}")
        return found[0]


def int_parameter(params: dict[str, Any], key: str, default: int = 0) -> int:
    """A non-negative integer runtime parameter from `model.yaml` (which may give "4")."""
    from inferd.core.errors import ModelLoadError

    value = params.get(key, default)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ModelLoadError(f"parameter '{key}' must be an integer") from None
    if number < 0:
        raise ModelLoadError(f"parameter '{key}' must be >= 0")
    return number


def framework_message(exc: BaseException, path: Path) -> str:
    """A framework's error message with the server's model-repository directory cut out."""
    text = str(exc).strip() or type(exc).__name__
    return text.replace(str(path.absolute().parent.parent).rstrip("/") + "/", "")


def check_output_names(model: str, wanted: Sequence[str] | None, known: Iterable[str]) -> None:
    """Refuse requested outputs the model does not have (InvalidInput names the first)."""
    from inferd.core.errors import InvalidInput

    names = set(known)
    for name in wanted or ():
        if name not in names:
            raise InvalidInput(f"unknown output '{name}' for model '{model}'")


#: Weight files that are pickles (torch.save and friends): loading one can run arbitrary code.
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def safetensors_only(
    path: Path, version: str, trusted: bool, ignore: frozenset[str] = frozenset()
) -> bool:
    """Check a Hugging Face style folder's weights; returns whether to load safetensors only.

    A pickled weight file in a folder without safetensors needs `trusted: true` (UntrustedArtifact
    otherwise); a folder with neither is a ModelLoadError. Files named in `ignore` (e.g. a
    trainer's pickled arguments, never loaded) do not count.
    """
    files = [p for p in path.rglob("*") if p.is_file()]
    with_safetensors = {p.parent for p in files if p.suffix == ".safetensors"}
    pickled = [
        p
        for p in files
        if p.suffix in PICKLE_WEIGHTS and p.parent not in with_safetensors and p.name not in ignore
    ]
    if pickled and not trusted:
        raise UntrustedArtifact(
            f"{pickled[0].relative_to(path)} is a pickle, which can run arbitrary code when "
            "loaded; convert the weights to safetensors, or set 'trusted: true' in model.yaml if "
            "you trust its author"
        )
    if not with_safetensors and not pickled:
        raise ModelLoadError(f"no *.safetensors weights in version {version}")
    return not pickled
