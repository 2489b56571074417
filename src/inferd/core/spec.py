"""Model configuration (`model.yaml`) as pure types, with strict parsing that names bad fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from inferd.core.datatypes import from_config_type
from inferd.core.errors import InvalidInput

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
    "labels",
    "instances",
    "dynamic_batching",
}


def _tensor_specs(raw: Any, field_name: str) -> tuple[TensorSpec, ...]:
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
    for key in ("trusted", "required"):
        if key in raw and not isinstance(raw[key], bool):
            raise InvalidInput(f"'{key}' must be true or false")
    labels = raw.get("labels") or []
    if not isinstance(labels, list):
        raise InvalidInput("'labels' must be a list of class names")
    return ModelSpec(
        name=name,
        runtime=runtime,
        task=raw.get("task"),
        platform=raw.get("platform"),
        max_batch_size=mbs,
        inputs=_tensor_specs(raw.get("inputs", raw.get("input")), "inputs"),
        outputs=_tensor_specs(raw.get("outputs", raw.get("output")), "outputs"),
        version_policy=_version_policy(raw.get("version_policy")),
        parameters=dict(params),
        trusted=bool(raw.get("trusted", False)),
        required=bool(raw.get("required", True)),
        labels=tuple(str(x) for x in labels),
    )
