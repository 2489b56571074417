"""Serving in-memory model objects (the Python API): `serve(models={"name": obj})`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inferd.core.errors import InvalidInput
from inferd.core.spec import parse_model_config
from inferd.runtimes.base import Runtime
from inferd.runtimes.object import ObjectRuntime
from inferd.serving.engine import InferenceEngine


async def add_objects(engine: InferenceEngine, models: Mapping[str, Any]) -> None:
    """Each value is a model object, a `Runtime`, or `{"model": obj, <model.yaml fields>}`."""
    for name, value in models.items():
        if isinstance(value, Runtime):
            await engine.add_model(value.spec, value)
            continue
        config: dict[str, Any] = {}
        obj = value
        if isinstance(value, dict):
            if "model" not in value:
                raise InvalidInput(f"models['{name}'] needs a 'model' entry")
            config = {k: v for k, v in value.items() if k != "model"}
            obj = value["model"]
        spec = parse_model_config(name, config)
        await engine.add_model(spec, ObjectRuntime(spec, obj))
