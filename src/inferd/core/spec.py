"""Model configuration (`model.yaml`) as pure types, with strict parsing that names bad fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from inferd.core.datatypes import from_config_type
from inferd.core.ensemble import Ensemble, ensemble_to_config, parse_ensemble
from inferd.core.errors import InvalidInput
from inferd.core.pipeline import Pipeline, parse_pipeline
from inferd.core.processors import build as build_processor
from inferd.core.scaling import (
    AutoscalingPolicy,
    Resources,
    autoscaling_to_config,
    parse_autoscaling,
    parse_resources,
    resources_to_config,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(name: str, what: str = "model name") -> str:
    """Model and version names are path components: refuse traversal and odd characters."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidInput(f"invalid {what} '{str(name)[:64]}'")
    return name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output: name, V2 datatype, shape (-1 = any).

    In `model.yaml` the shape excludes the batch dimension when `max_batch_size > 0`.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions to serve: 'latest' (n newest), 'all', or 'specific' versions."""

    kind: str = "latest"
    latest: int = 1
    versions: tuple[str, ...] = ()

    def select(self, available: list[str]) -> list[str]:
        """Pick the served versions among those on disk (numeric order, as Triton)."""
        ordered = sorted(available, key=version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.latest :] if ordered else []


def version_key(v: str) -> tuple[int, int | str]:
    """Sort key for versions: numeric ones in numeric order, then the rest by name."""
    return (0, int(v)) if v.isdigit() else (1, v)


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Dynamic batching (Triton semantics): wait up to `max_queue_delay_us` to fill a batch."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the server knows about a model before loading it."""

    name: str
    runtime: str | None = None
    task: str | None = None
    platform: str | None = None
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    parameters: dict[str, Any] = field(default_factory=dict)
    trusted: bool = False
    required: bool = True
    labels: tuple[str, ...] = ()
    #: Replicas of each version, and where they run: worker "process"es or in-process "thread"s.
    instances: int = 1
    instance_kind: str = "process"
    #: None = no dynamic batching (each request runs alone).
    batching: BatchingPolicy | None = None
    #: Requests waiting beyond this are refused at once with 503 (0 = unbounded).
    max_queue_size: int = 0
    #: A single execution running longer than this marks its replica hung (it is replaced).
    execution_timeout_s: float = 60.0
    #: A process replica whose worker the kernel reports stopped (SIGSTOP, a debugger) this long
    #: is killed and replaced, busy or not; a slow model that still runs waits for the above.
    liveness_timeout_s: float = 5.0
    #: None = a fixed `instances` count; otherwise replicas follow the load within bounds.
    autoscaling: AutoscalingPolicy | None = None
    #: CPU, memory and GPU limits of each worker process.
    resources: Resources = field(default_factory=Resources)
    #: Whether its worker processes may use the network. Off unless said: uploaded models never
    #: may; the model repository turns it on for its models (`workers.repository_network`).
    network: bool = False
    #: The model's files came from a member who is not trusted: the server process parses none
    #: of them (a chat template, a tokenizer), only its sandboxed workers do.
    untrusted_files: bool = False
    #: Identical requests are answered from the server's response cache (Triton's
    #: `response_cache { enable: true }`); off unless the model's config asks for it.
    response_cache: bool = False
    #: Never unloaded to make room under the server's memory budget (loaded at start, like
    #: every model when there is no budget); `required` is about readiness, not memory.
    pinned: bool = False
    #: `platform: ensemble`: the steps that answer for it (Triton's `ensemble_scheduling`).
    ensemble: Ensemble | None = None
    #: `platform: pipeline`: the inference graph that answers for it (`core/pipeline.py`).
    pipeline: Pipeline | None = None

    def batched(self, specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        """Declared shapes as full shapes: the batch dimension (-1) in front when batching."""
        if self.max_batch_size <= 0:
            return specs
        return tuple(TensorSpec(t.name, t.datatype, (-1, *t.shape), t.optional) for t in specs)

    def with_io(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> ModelSpec:
        return replace(self, inputs=inputs, outputs=outputs)


_KNOWN_KEYS = {
    "name",
    "runtime",
    "backend",
    "task",
    "platform",
    "max_batch_size",
    "inputs",
    "outputs",
    "input",
    "output",
    "version_policy",
    "parameters",
    "trusted",
    "required",
    "pinned",
    "labels",
    "instances",
    "instance_kind",
    "dynamic_batching",
    "max_queue_size",
    "execution_timeout_s",
    "liveness_timeout_s",
    "autoscaling",
    "resources",
    "network",
    "untrusted_files",
    "response_cache",
    "ensemble_scheduling",
    "pipeline",
}
INSTANCE_KINDS = ("process", "thread")


def tensor_specs(raw: Any, field_name: str) -> tuple[TensorSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput(f"'{field_name}' must be a list")
    out = []
    seen = set()
    for i, item in enumerate(raw):
        where = f"{field_name}[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"'{where}' must be a mapping")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"'{where}.name' is required")
        if name in seen:
            raise InvalidInput(f"'{where}.name' duplicates '{name}'")
        seen.add(name)
        dt = item.get("datatype", item.get("data_type"))
        if not isinstance(dt, str):
            raise InvalidInput(f"'{where}.datatype' is required")
        try:
            datatype = from_config_type(dt)
        except InvalidInput:
            raise InvalidInput(f"'{where}.datatype' '{dt}' is not a V2 datatype") from None
        shape = item.get("shape", item.get("dims"))
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
        ):
            raise InvalidInput(f"'{where}.shape' must be a list of integers >= -1")
        out.append(TensorSpec(name, datatype, tuple(shape), bool(item.get("optional", False))))
    return tuple(out)


def _version_policy(raw: Any) -> VersionPolicy:
    if raw is None or raw == "latest":
        return VersionPolicy()
    if raw == "all":
        return VersionPolicy(kind="all")
    if isinstance(raw, list):
        return VersionPolicy(kind="specific", versions=tuple(str(v) for v in raw))
    if isinstance(raw, dict):
        if "latest" in raw:
            n = raw["latest"]
            n = n.get("num_versions", 1) if isinstance(n, dict) else n
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise InvalidInput("'version_policy.latest' must be a positive integer")
            return VersionPolicy(kind="latest", latest=n)
        if "all" in raw:
            return VersionPolicy(kind="all")
        if "specific" in raw:
            v = raw["specific"]
            v = v.get("versions", []) if isinstance(v, dict) else v
            if not isinstance(v, list):
                raise InvalidInput("'version_policy.specific' must be a list of versions")
            return VersionPolicy(kind="specific", versions=tuple(str(x) for x in v))
    raise InvalidInput("'version_policy' must be latest, all, a list, or {latest|specific: ...}")


def _int_field(raw: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInput(f"'{key}' must be an integer >= {minimum}")
    return value


_DELAY_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}


def _delay_us(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s)\s*", value)
        if m:
            return int(float(m.group(1)) * _DELAY_UNITS[m.group(2)])
    raise InvalidInput("'dynamic_batching.max_queue_delay' must be like '500us', '2ms' or '0.1s'")


def _batching(raw: Any, max_batch_size: int) -> BatchingPolicy | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("'dynamic_batching' must be a mapping (or true)")
    unknown = sorted(
        set(raw) - {"max_queue_delay", "max_queue_delay_microseconds", "preferred_batch_sizes",
                    "preferred_batch_size"}
    )  # fmt: skip
    if unknown:
        raise InvalidInput(f"unknown field(s) in 'dynamic_batching': {', '.join(unknown)}")
    if max_batch_size <= 0:
        raise InvalidInput("'dynamic_batching' needs 'max_batch_size' > 0")
    delay = raw.get("max_queue_delay", raw.get("max_queue_delay_microseconds", 0))
    preferred = raw.get("preferred_batch_sizes", raw.get("preferred_batch_size", []))
    if not isinstance(preferred, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p <= max_batch_size
        for p in preferred
    ):
        raise InvalidInput(
            "'dynamic_batching.preferred_batch_sizes' must be integers in 1..max_batch_size"
        )
    return BatchingPolicy(_delay_us(delay), tuple(sorted(set(preferred))))


def _instances(raw: dict[str, Any]) -> tuple[int, str]:
    value = raw.get("instances", 1)
    kind = raw.get("instance_kind", "process")
    if isinstance(value, dict):
        kind = value.get("kind", kind)
        value = value.get("count", 1)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
        raise InvalidInput("'instances' must be an integer between 1 and 64")
    if kind not in INSTANCE_KINDS:
        raise InvalidInput(f"'instance_kind' must be one of {', '.join(INSTANCE_KINDS)}")
    return value, kind


def _response_cache(raw: Any) -> bool:
    """`response_cache: {enable: true}` (Triton's spelling), or `true` / `false`."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if not isinstance(raw, dict):
        raise InvalidInput("'response_cache' must be a mapping like {enable: true} (or a bool)")
    unknown = sorted(set(raw) - {"enable"})
    if unknown:
        raise InvalidInput(f"unknown field(s) in 'response_cache': {', '.join(unknown)}")
    enable = raw.get("enable", False)
    if not isinstance(enable, bool):
        raise InvalidInput("'response_cache.enable' must be true or false")
    return enable


def parse_model_config(name: str, raw: Any) -> ModelSpec:
    """Build a ModelSpec from a parsed `model.yaml`; every error names the offending field."""
    check_name(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("model.yaml must be a mapping")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise InvalidInput(f"unknown field(s) in model.yaml: {', '.join(unknown)}")
    if "name" in raw and raw["name"] != name:
        raise InvalidInput(f"'name' is '{raw['name']}' but the folder is '{name}'")
    mbs = raw.get("max_batch_size", 0)
    if not isinstance(mbs, int) or isinstance(mbs, bool) or mbs < 0:
        raise InvalidInput("'max_batch_size' must be an integer >= 0")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a mapping")
    runtime = raw.get("runtime", raw.get("backend"))
    if runtime is not None and not isinstance(runtime, str):
        raise InvalidInput("'runtime' must be a string")
    for key in ("trusted", "required", "pinned", "network", "untrusted_files"):
        if key in raw and not isinstance(raw[key], bool):
            raise InvalidInput(f"'{key}' must be true or false")
    labels = raw.get("labels") or []
    if not isinstance(labels, list):
        raise InvalidInput("'labels' must be a list of class names")
    instances, kind = _instances(raw)
    autoscaling = parse_autoscaling(raw.get("autoscaling"))
    if autoscaling is not None:
        instances = max(autoscaling.min_replicas, 1)  # zero comes later, when idle
    resources = parse_resources(raw.get("resources"))
    if resources.any and kind == "thread":
        raise InvalidInput("'resources' apply to process replicas, not instance_kind: thread")
    timeout = raw.get("execution_timeout_s", 60.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidInput("'execution_timeout_s' must be a positive number of seconds")
    liveness = raw.get("liveness_timeout_s", 5.0)
    if not isinstance(liveness, int | float) or isinstance(liveness, bool) or liveness <= 0:
        raise InvalidInput("'liveness_timeout_s' must be a positive number of seconds")
    inputs = tensor_specs(raw.get("inputs", raw.get("input")), "inputs")
    outputs = tensor_specs(raw.get("outputs", raw.get("output")), "outputs")
    ensemble = _ensemble(name, raw, inputs, outputs)
    if ensemble is not None:
        runtime = "ensemble"
    pipeline = _pipeline(raw)
    if pipeline is not None:
        runtime = "pipeline"
        doc = pipeline.document
        inputs = inputs or tensor_specs(doc.get("inputs"), "pipeline.inputs")
        outputs = outputs or tensor_specs(doc.get("outputs"), "pipeline.outputs")
        if not inputs or not outputs:
            raise InvalidInput("a pipeline must declare its 'inputs' and 'outputs'")
    return ModelSpec(
        name=name,
        runtime=runtime,
        task=raw.get("task"),
        platform=raw.get("platform"),
        max_batch_size=mbs,
        inputs=inputs,
        outputs=outputs,
        version_policy=_version_policy(raw.get("version_policy")),
        parameters=dict(params),
        trusted=bool(raw.get("trusted", False)),
        required=bool(raw.get("required", True)),
        pinned=bool(raw.get("pinned", False)),
        labels=tuple(str(x) for x in labels),
        instances=instances,
        instance_kind=kind,
        batching=_batching(raw.get("dynamic_batching"), mbs),
        max_queue_size=_int_field(raw, "max_queue_size", 0, 0),
        execution_timeout_s=float(timeout),
        liveness_timeout_s=float(liveness),
        autoscaling=autoscaling,
        resources=resources,
        network=bool(raw.get("network", False)),
        untrusted_files=bool(raw.get("untrusted_files", False)),
        response_cache=_response_cache(raw.get("response_cache")),
        ensemble=ensemble,
        pipeline=pipeline,
    )


def _composed(raw: dict[str, Any], platform: str, key: str, what: str) -> Any:
    """The `key` section of a model made of other models (`platform: <platform>`), or None for
    any other model; the two go together, and such a model has no runtime of its own."""
    section = raw.get(key)
    if raw.get("platform") != platform:
        if section is not None:
            raise InvalidInput(f"'{key}' needs 'platform: {platform}'")
        return None
    if section is None:
        raise InvalidInput(f"'platform: {platform}' needs '{key}', {what}")
    if raw.get("runtime", raw.get("backend")) not in (None, platform):
        raise InvalidInput(
            f"'runtime': a model with 'platform: {platform}' has none; its steps' models run"
        )
    return section


def _pipeline(raw: dict[str, Any]) -> Pipeline | None:
    """`platform: pipeline` with its `pipeline` document, or None for any other model."""
    doc = _composed(raw, "pipeline", "pipeline", "the graph document")
    if doc is None:
        return None
    try:
        pipeline = parse_pipeline(doc)
        for where, step in pipeline.processors():
            build_processor(step.target, step.config, where)
    except InvalidInput as e:
        raise InvalidInput(f"pipeline.{e.message}") from None
    return pipeline


def _ensemble(
    name: str, raw: dict[str, Any], inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> Ensemble | None:
    """`platform: ensemble` with its `ensemble_scheduling`, or None for any other model."""
    scheduling = _composed(raw, "ensemble", "ensemble_scheduling", "with its steps")
    if scheduling is None:
        return None
    ensemble = parse_ensemble(scheduling, name, [t.name for t in inputs],
                              [t.name for t in outputs])  # fmt: skip
    for i, step in enumerate(ensemble.steps):
        try:
            check_name(step.model)
        except InvalidInput as e:
            field = f"ensemble_scheduling.step[{i}].model_name"
            raise InvalidInput(f"'{field}': {e.message}") from None
    return ensemble


def spec_to_config(spec: ModelSpec) -> dict[str, Any]:
    """The `model.yaml` form of a spec: `parse_model_config(name, spec_to_config(s)) == s`."""
    policy = spec.version_policy
    vp: Any = (
        "all" if policy.kind == "all"
        else list(policy.versions) if policy.kind == "specific"
        else {"latest": policy.latest}
    )  # fmt: skip
    out: dict[str, Any] = {
        "runtime": spec.runtime,
        "task": spec.task,
        "platform": spec.platform,
        "max_batch_size": spec.max_batch_size,
        "inputs": [t.to_dict() | {"optional": t.optional} for t in spec.inputs],
        "outputs": [t.to_dict() | {"optional": t.optional} for t in spec.outputs],
        "version_policy": vp,
        "parameters": dict(spec.parameters),
        "trusted": spec.trusted,
        "required": spec.required,
        "pinned": spec.pinned,
        "labels": list(spec.labels),
        "instances": spec.instances,
        "instance_kind": spec.instance_kind,
        "max_queue_size": spec.max_queue_size,
        "execution_timeout_s": spec.execution_timeout_s,
        "liveness_timeout_s": spec.liveness_timeout_s,
        "network": spec.network,
        "untrusted_files": spec.untrusted_files,
        "response_cache": {"enable": spec.response_cache},
    }
    out["autoscaling"] = autoscaling_to_config(spec.autoscaling)
    out["resources"] = resources_to_config(spec.resources)
    if spec.ensemble is not None:
        out["ensemble_scheduling"] = ensemble_to_config(spec.ensemble)
        out["runtime"] = None
    if spec.pipeline is not None:
        out["pipeline"] = dict(spec.pipeline.document)
        out["runtime"] = None
    if spec.batching is not None:
        out["dynamic_batching"] = {
            "max_queue_delay_microseconds": spec.batching.max_queue_delay_us,
            "preferred_batch_sizes": list(spec.batching.preferred_batch_sizes),
        }
    return {k: v for k, v in out.items() if v is not None}
