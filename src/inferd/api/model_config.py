"""Server and model metadata, Triton's ModelConfig and load-time config overrides as plain
values, shared by the REST and gRPC adapters."""

from __future__ import annotations

from typing import Any

import orjson

from inferd.core.datatypes import config_type
from inferd.core.ensemble import ensemble_to_config
from inferd.core.errors import InferdError, InvalidInput, ModelNotFound
from inferd.core.spec import TensorSpec, version_key
from inferd.serving.engine import InferenceEngine, ServedModel, ServedVersion

#: Protocol extensions reported by server metadata (GET /v2 and gRPC ServerMetadata).
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "model_configuration",
    "classification",
    "parameters",
]


def metadata(model: ServedModel, sv: ServedVersion) -> dict[str, Any]:
    """V2 model metadata: name, served versions, platform, inputs and outputs (full shapes)."""
    return {
        "name": model.name,
        "versions": sorted(model.versions, key=version_key),
        "platform": sv.platform,
        "inputs": [t.to_dict() for t in sv.inputs],
        "outputs": [t.to_dict() for t in sv.outputs],
    }


def _dims(t: TensorSpec, batched: bool) -> list[int]:
    shape = list(t.shape)
    return shape[1:] if batched and shape else shape


def model_config(model: ServedModel, sv: ServedVersion) -> dict[str, Any]:
    """Triton `inference.ModelConfig` as JSON (what perf_analyzer and tritonclient read)."""
    spec = sv.spec
    batched = spec.max_batch_size > 0
    policy = spec.version_policy
    if policy.kind == "all":
        vp: dict[str, Any] = {"all": {}}
    elif policy.kind == "specific":
        vp = {"specific": {"versions": [int(v) if v.isdigit() else v for v in policy.versions]}}
    else:
        vp = {"latest": {"num_versions": policy.latest}}
    return {
        "name": model.name,
        "platform": sv.platform,
        "backend": sv.runtime_name,
        "runtime": sv.runtime_name,
        "version_policy": vp,
        "max_batch_size": spec.max_batch_size,
        "input": [
            {
                "name": t.name,
                "data_type": config_type(t.datatype),
                "dims": _dims(t, batched),
                "optional": t.optional,
            }
            for t in sv.inputs
        ],
        "output": [
            {"name": t.name, "data_type": config_type(t.datatype), "dims": _dims(t, batched)}
            for t in sv.outputs
        ],
        "instance_group": [{"name": model.name, "kind": "KIND_CPU", "count": spec.instances}],
        "parameters": {k: {"string_value": str(v)} for k, v in spec.parameters.items()},
        "model_transaction_policy": {"decoupled": False},
        "response_cache": {"enable": spec.response_cache},
    } | ({"ensemble_scheduling": ensemble_to_config(spec.ensemble)} if spec.ensemble else {})


def load_config(name: str, raw: Any) -> dict[str, Any] | None:
    """The `config` load parameter: a JSON object (or its text) overriding model.yaml fields."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(
                f"failed to load '{name}': 'config' is not valid JSON: {e}"
            ) from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"failed to load '{name}': 'config' must be a JSON object")
    return raw


class LoadFailed(ModelNotFound):
    """A repository load of a model the repository does not have (404 / NOT_FOUND), with the
    reason in Triton's words."""

    def __init__(self, name: str, reason: str) -> None:
        InferdError.__init__(self, f"failed to load '{name}': {reason}")
        self.name, self.version = name, None


async def load_from_repository(
    engine: InferenceEngine, name: str, keys: list[str], raw_config: Any
) -> None:
    """The repository extension's load, for both transports (REST `POST
    /v2/repository/models/{m}/load`, gRPC `RepositoryModelLoad`): `keys` are the request's
    parameter names, `raw_config` its `config` parameter. File overrides are refused: what a
    model is made of changes in the repository folder, never over the API."""
    if any(k.startswith("file:") for k in keys):
        raise InvalidInput(
            "file overrides ('file:...') are not accepted over the API; "
            "change the model repository instead"
        )
    config = load_config(name, raw_config)
    try:
        await engine.load(name, config)
    except LoadFailed:
        raise
    except ModelNotFound as e:
        raise LoadFailed(name, e.message) from None
