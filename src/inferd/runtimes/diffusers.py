"""Text-to-image pipelines from a local diffusers directory (`model_index.json`), PNG out.

Safety: the pipeline class and every component must be stock diffusers / transformers classes
(a custom pipeline or a component naming another library is refused before anything is
imported); loading passes `trust_remote_code=False`, `local_files_only=True` and reads
safetensors only, unless the model is `trusted` and ships pickle weights.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from inferd.core.errors import (
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
)
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import Runtime, framework_message, safetensors_only

#: Libraries a pipeline component may come from (others would import code inferd does not ship).
COMPONENT_LIBRARIES = ("diffusers", "transformers")
SIZE_RANGE = (8, 2048)
STEPS_RANGE = (1, 200)
_DTYPES = ("float32", "float16", "bfloat16")


class DiffusersRuntime(Runtime):
    """Runs a text-to-image `DiffusionPipeline`: `prompt` (+ `negative_prompt`) -> PNG `image`.

    Request parameters: `num_inference_steps` (default 20), `height`, `width` (default: the
    pipeline's), `guidance_scale`, `seed`. `model.yaml` parameters give defaults for the same
    names, plus `device` (cpu/cuda) and `dtype` (float32/float16/bfloat16; default float16 on
    CUDA, float32 on CPU). While a request runs, `progress` is `(steps done, total steps)`.
    """

    name = "diffusers"
    platform = "diffusers"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._torch: Any = None
        self._pipe: Any = None
        self._device = "cpu"
        self._default_size = (512, 512)
        self._negative = False
        #: (steps done, total steps) of the running (or last) request; (0, 0) before any.
        self.progress: tuple[int, int] = (0, 0)

    def load(self) -> None:
        try:
            import diffusers
            import torch
        except ImportError:
            raise ModelLoadError(
                "the diffusers runtime needs diffusers, transformers and torch: "
                "pip install diffusers transformers torch"
            ) from None
        self._check_index(diffusers)
        use_safetensors = safetensors_only(self.path, self.version, self.spec.trusted)
        params = self.spec.parameters
        device = params.get("device")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = str(device)
        if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
            raise ModelLoadError(
                "parameter 'device' must be 'cpu' or 'cuda' (and CUDA must be available)"
            )
        dtype = str(params.get("dtype", "float32" if device == "cpu" else "float16"))
        if dtype not in _DTYPES:
            raise ModelLoadError(f"parameter 'dtype' must be one of {', '.join(_DTYPES)}")
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                str(self.path),
                local_files_only=True,
                use_safetensors=use_safetensors,
                trust_remote_code=False,
                dtype=getattr(torch, dtype),
            )
            pipe = pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the pipeline: {framework_message(exc, self.path)}"
            ) from None
        accepted = inspect.signature(pipe.__call__).parameters
        if "prompt" not in accepted or "callback_on_step_end" not in accepted:
            raise ModelLoadError(
                f"{type(pipe).__name__} is not a text-to-image pipeline this runtime can drive "
                "(it needs 'prompt' and 'callback_on_step_end')"
            )
        self._negative = "negative_prompt" in accepted
        self._default_size = _default_size(pipe)
        self._torch, self._pipe, self._device = torch, pipe, device
        inputs = [TensorSpec("prompt", "BYTES", (-1,))]
        if self._negative:
            inputs.append(TensorSpec("negative_prompt", "BYTES", (-1,), optional=True))
        self._inputs = tuple(inputs)
        self._outputs = (TensorSpec("image", "BYTES", (-1,)),)

    def _check_index(self, diffusers: Any) -> None:
        path = self.path / "model_index.json"
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"no model_index.json in version {self.version}") from None
        except (OSError, ValueError):
            raise ModelLoadError("model_index.json is not valid JSON") from None
        if not isinstance(index, dict):
            raise ModelLoadError("model_index.json must be a JSON object")
        cls_name = index.get("_class_name")
        pipeline_cls = getattr(diffusers, cls_name, None) if isinstance(cls_name, str) else None
        if not (
            inspect.isclass(pipeline_cls) and issubclass(pipeline_cls, diffusers.DiffusionPipeline)
        ):
            raise ModelLoadError(
                f"model_index.json names pipeline '{str(cls_name)[:80]}', which is not a diffusers "
                "pipeline; custom pipelines are never run"
            )
        for key, value in index.items():
            if key.startswith("_") or not isinstance(value, list):
                continue
            if len(value) != 2 or value == [None, None]:
                continue
            library, cls = value
            if library not in COMPONENT_LIBRARIES or not isinstance(cls, str):
                raise ModelLoadError(
                    f"model_index.json component '{key}' comes from '{str(library)[:80]}'; only "
                    f"{' and '.join(COMPONENT_LIBRARIES)} components are loaded, never a "
                    "repository's own code"
                )

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._pipe is None:
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        self.requested_outputs(outputs)
        prompts = _strings(inputs, "prompt")
        if not prompts:
            raise InvalidInput("input 'prompt' holds no prompts")
        negative = _strings(inputs, "negative_prompt") if "negative_prompt" in inputs else None
        if negative is not None and len(negative) not in (1, len(prompts)):
            raise InvalidInput(
                "input 'negative_prompt' must hold one text or one per prompt "
                f"({len(prompts)}), not {len(negative)}"
            )
        if negative is not None and len(negative) == 1:
            negative = negative * len(prompts)
        options = self.options(parameters or {})
        seed = options.pop("seed")
        steps = options["num_inference_steps"]
        generators = [
            self._torch.Generator(device=self._device).manual_seed(seed + i)
            for i in range(len(prompts))
        ]

        def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # Second-order schedulers run more timesteps than steps: the pipeline knows how many.
            self.progress = (step + 1, int(getattr(pipe, "num_timesteps", 0) or steps))
            if self.progress_hook is not None:
                self.progress_hook(*self.progress)
            return kwargs

        self.progress = (0, steps)
        call: dict[str, Any] = {
            "prompt": prompts,
            "generator": generators,
            "callback_on_step_end": on_step,
            "output_type": "pil",
            **options,
        }
        if negative is not None:
            call["negative_prompt"] = negative
        try:
            result = self._pipe(**call)
        except (InvalidInput, ModelExecutionError):
            raise
        except Exception as exc:
            raise ModelExecutionError(framework_message(exc, self.path)) from None
        images = [_png(image) for image in result.images]
        return {"image": np.array(images, dtype=object).reshape(len(images))}

    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validated pipeline arguments from request parameters over model.yaml defaults."""
        defaults = self.spec.parameters

        def get(key: str, default: Any) -> Any:
            value = request.get(key, defaults.get(key))
            return default if value is None else value

        low, high = SIZE_RANGE
        out: dict[str, Any] = {
            "num_inference_steps": _integer(get("num_inference_steps", 20), "num_inference_steps",
                                            *STEPS_RANGE),
            "height": _integer(get("height", self._default_size[0]), "height", low, high),
            "width": _integer(get("width", self._default_size[1]), "width", low, high),
        }  # fmt: skip
        for key in ("height", "width"):
            if out[key] % 8:
                raise InvalidInput(f"parameter '{key}' must be a multiple of 8, not {out[key]}")
        guidance = get("guidance_scale", None)
        if guidance is not None:
            if (
                not isinstance(guidance, int | float)
                or isinstance(guidance, bool)
                or not math.isfinite(guidance)
                or not 0 <= guidance <= 100
            ):
                raise InvalidInput("parameter 'guidance_scale' must be a number in [0, 100]")
            out["guidance_scale"] = float(guidance)
        seed = get("seed", None)
        out["seed"] = random.randrange(2**31) if seed is None else _integer(seed, "seed", 0, 2**62)
        return out

    def unload(self) -> None:
        on_cuda = self._device.startswith("cuda")
        self._pipe = None
        if self._torch is not None and on_cuda:
            self._torch.cuda.empty_cache()


def _default_size(pipe: Any) -> tuple[int, int]:
    """The pipeline's own default image size (height, width)."""
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if isinstance(sample, list | tuple) and len(sample) == 2:
        return int(sample[0]) * scale, int(sample[1]) * scale
    if isinstance(sample, int):
        return sample * scale, sample * scale
    return 512, 512


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"parameter '{name}' must be an integer in [{low}, {high}]")
    return value


def _strings(inputs: dict[str, np.ndarray], name: str) -> list[str]:
    if name not in inputs:
        raise InvalidInput(f"input '{name}' is required")
    out = []
    for item in np.asarray(inputs[name], dtype=object).ravel().tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}' must be UTF-8") from None
        out.append(str(item))
    return out


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
