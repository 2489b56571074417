"""Triton ensembles: a model whose `model.yaml` says `platform: ensemble` and whose
`ensemble_scheduling.step` list wires other models together by tensor names, as in Triton's
model configuration. Pure: parsing, validation and the order the steps run in.

Each step names a model (`model_name`, `model_version`: -1 or absent for the newest), maps the
step model's inputs to ensemble tensors (`input_map: {step input: ensemble tensor}`) and its
outputs to ensemble tensors (`output_map: {step output: ensemble tensor}`). An ensemble tensor is
one of the ensemble's declared inputs, or the output of exactly one step. Steps run as soon as
the tensors they read exist: `waves` groups them so that each wave reads only what the waves
before produced (the steps of one wave run concurrently).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    model: str
    #: None: the model's newest version (Triton's -1).
    version: str | None
    #: (step model input, ensemble tensor) pairs.
    inputs: tuple[tuple[str, str], ...]
    #: (step model output, ensemble tensor) pairs.
    outputs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Ensemble:
    steps: tuple[EnsembleStep, ...]
    #: Indices into `steps`: each wave reads only ensemble inputs and earlier waves' outputs.
    waves: tuple[tuple[int, ...], ...]


def _field(i: int, key: str = "") -> str:
    base = f"ensemble_scheduling.step[{i}]"
    return f"{base}.{key}" if key else base


def _pairs(raw: Any, field: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput(f"'{field}' must be a non-empty mapping of tensor names")
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or not v:
            raise InvalidInput(f"'{field}' must map tensor names (strings) to tensor names")
    return tuple(raw.items())


def _version(raw: Any, field: str) -> str | None:
    if raw is None or raw == -1 or raw == "-1":
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidInput(f"'{field}' must be a version number (or -1 for the newest)")
    text = str(raw)
    if isinstance(raw, int) and raw < 1:
        raise InvalidInput(f"'{field}' must be a version number >= 1 (or -1 for the newest)")
    return text


def parse_ensemble(raw: Any, name: str, inputs: Sequence[str], outputs: Sequence[str]) -> Ensemble:
    """The `ensemble_scheduling` of ensemble `name` whose declared inputs and outputs are
    `inputs` and `outputs`; every error names the field or the tensor at fault. (Step model
    names are checked as names by the caller, `spec.parse_model_config`.)"""
    if not isinstance(raw, dict):
        raise InvalidInput("'ensemble_scheduling' must be a mapping with a 'step' list")
    unknown = sorted(set(raw) - {"step"})
    if unknown:
        raise InvalidInput(f"unknown field(s) in 'ensemble_scheduling': {', '.join(unknown)}")
    raw_steps = raw.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidInput("'ensemble_scheduling.step' must be a non-empty list of steps")
    if not inputs or not outputs:
        raise InvalidInput("an ensemble must declare its 'inputs' and 'outputs'")
    steps = []
    for i, s in enumerate(raw_steps):
        if not isinstance(s, dict):
            raise InvalidInput(f"'{_field(i)}' must be a mapping")
        unknown = sorted(set(s) - {"model_name", "model_version", "input_map", "output_map"})
        if unknown:
            raise InvalidInput(f"unknown field(s) in '{_field(i)}': {', '.join(unknown)}")
        model = s.get("model_name")
        if not isinstance(model, str) or not model:
            raise InvalidInput(f"'{_field(i, 'model_name')}' must be a model name")
        if model == name:
            raise InvalidInput(f"'{_field(i, 'model_name')}': an ensemble cannot run itself")
        steps.append(EnsembleStep(
            model,
            _version(s.get("model_version"), _field(i, "model_version")),
            _pairs(s.get("input_map"), _field(i, "input_map")),
            _pairs(s.get("output_map"), _field(i, "output_map")),
        ))  # fmt: skip
    return Ensemble(tuple(steps), _waves(steps, inputs, outputs))


def _waves(
    steps: Sequence[EnsembleStep], inputs: Sequence[str], outputs: Sequence[str]
) -> tuple[tuple[int, ...], ...]:
    producer: dict[str, int] = {}
    for i, step in enumerate(steps):
        for _, tensor in step.outputs:
            if tensor in inputs:
                raise InvalidInput(
                    f"'{_field(i, 'output_map')}' writes '{tensor}', an input of the ensemble"
                )
            if tensor in producer:
                raise InvalidInput(
                    f"'{_field(i, 'output_map')}' writes '{tensor}', which step "
                    f"{producer[tensor]} writes too"
                )
            producer[tensor] = i
    read = {tensor for step in steps for _, tensor in step.inputs}
    for i, step in enumerate(steps):
        for _, tensor in step.inputs:
            if tensor not in producer and tensor not in inputs:
                raise InvalidInput(
                    f"'{_field(i, 'input_map')}' reads '{tensor}', which is neither an input "
                    "of the ensemble nor written by a step"
                )
        if not any(t in read or t in outputs for _, t in step.outputs):
            raise InvalidInput(f"'{_field(i)}' writes nothing the ensemble reads or returns")
    for tensor in outputs:
        if tensor not in producer:
            raise InvalidInput(f"output '{tensor}' of the ensemble is written by no step")
    unused = [t for t in inputs if t not in read]
    if unused:
        raise InvalidInput(f"input '{unused[0]}' of the ensemble is read by no step")
    have = set(inputs)
    left = list(range(len(steps)))
    waves = []
    while left:
        ready = tuple(i for i in left if all(t in have for _, t in steps[i].inputs))
        if not ready:
            names = ", ".join(f"step {i} ({steps[i].model})" for i in left)
            raise InvalidInput(
                f"'ensemble_scheduling.step' has a cycle: {names} wait on each other"
            )
        waves.append(ready)
        for i in ready:
            have.update(t for _, t in steps[i].outputs)
        left = [i for i in left if i not in ready]
    return tuple(waves)


def ensemble_to_config(e: Ensemble) -> dict[str, Any]:
    """Back to `model.yaml`'s `ensemble_scheduling` (Triton's field names)."""
    return {
        "step": [
            {
                "model_name": s.model,
                "model_version": int(s.version)
                if s.version and s.version.isdigit()
                else (s.version or -1),
                "input_map": dict(s.inputs),
                "output_map": dict(s.outputs),
            }
            for s in e.steps
        ]
    }
