"""Framework runtimes behind one `Runtime` interface; frameworks are imported lazily."""

from __future__ import annotations

import importlib
from pathlib import Path

from inferd.core.errors import ModelLoadError
from inferd.runtimes.base import Runtime

#: runtime name -> "module:Class". Modules import their framework inside `load()` only.
RUNTIMES: dict[str, str] = {
    "onnx": "inferd.runtimes.onnx:OnnxRuntime",
    "sklearn": "inferd.runtimes.sklearn:SklearnRuntime",
    "xgboost": "inferd.runtimes.xgboost:XGBoostRuntime",
    "lightgbm": "inferd.runtimes.lightgbm:LightGBMRuntime",
    "torch": "inferd.runtimes.torch:TorchRuntime",
    "python": "inferd.runtimes.python:PythonRuntime",
    "transformers": "inferd.runtimes.transformers:TransformersRuntime",
    "diffusers": "inferd.runtimes.diffusers:DiffusersRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    """Resolve a runtime name to its class, importing the module (not the framework)."""
    target = RUNTIMES.get(name)
    if target is None:
        raise ModelLoadError(f"unknown runtime '{name}' (known: {', '.join(sorted(RUNTIMES))})")
    module, _, cls = target.partition(":")
    runtime: type[Runtime] = getattr(importlib.import_module(module), cls)
    return runtime


def detect_runtime(version_dir: Path) -> str:
    """Guess the runtime from the artifact in a version directory (content where ambiguous)."""
    files = [p for p in version_dir.iterdir() if p.is_file()]
    names = {p.name for p in files}
    suffixes = {p.suffix for p in files}
    if "model.py" in names:
        return "python"
    # Hugging Face directories: diffusers pipelines, transformers checkpoints (safetensors).
    if "model_index.json" in names:
        return "diffusers"
    if "config.json" in names and (".safetensors" in suffixes or "modules.json" in names):
        return "transformers"
    if ".onnx" in suffixes:
        return "onnx"
    if suffixes & {".skops", ".joblib", ".pkl", ".pickle"}:
        return "sklearn"
    if ".ubj" in suffixes:
        return "xgboost"
    if suffixes & {".pt", ".pt2", ".torchscript"}:
        return "torch"
    for p in files:
        if (
            p.suffix == ".json"
            and _head(p).lstrip().startswith(b"{")
            and b'"learner"' in _head(p, 4096)
        ):
            return "xgboost"
        if p.suffix in {".txt", ".lgb", ".model"} and _head(p).startswith(b"tree"):
            return "lightgbm"
    raise ModelLoadError(
        f"cannot detect the runtime from the files in version '{version_dir.name}'; "
        "set 'runtime' in model.yaml"
    )


def _head(path: Path, n: int = 64) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


__all__ = ["RUNTIMES", "Runtime", "detect_runtime", "runtime_class"]
