"""A model repository folder, as Triton's: DIR/<model>/model.yaml, DIR/<model>/<version>/."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferd.core.errors import InvalidInput, ModelLoadError, ModelNotFound
from inferd.core.spec import ModelSpec, check_name, parse_model_config
from inferd.core.traffic import Split

CONFIG_FILE = "model.yaml"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's files are and its parsed configuration."""

    spec: ModelSpec
    path: Path
    versions: tuple[str, ...]
    #: Specs of single versions where they differ from `spec` (a deployment's revisions each
    #: carry their own version's signature).
    version_specs: Mapping[str, ModelSpec] = field(default_factory=dict)
    #: Keep a served version whose spec is unchanged instead of reloading it (the files of a
    #: registry version never change): a new split or a new revision reloads nothing else.
    keep_unchanged: bool = False
    #: How requests that name no version are shared among the versions (None: the newest).
    traffic: Split | None = None

    def version_path(self, version: str) -> Path:
        return self.path / version

    def spec_of(self, version: str) -> ModelSpec:
        return self.version_specs.get(version, self.spec)


class ModelRepository:
    """Reads model folders; never writes. Names are checked so nothing escapes the root.

    `network`: whether its models' workers may use the network when `model.yaml` does not say
    (the operator's own models; uploaded ones never may)."""

    def __init__(self, root: Path, network: bool = True) -> None:
        self.root = root.resolve()
        self.network = network

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                try:
                    out.append(check_name(p.name))
                except InvalidInput:
                    continue
        return out

    def source(self, name: str, override: dict[str, Any] | None = None) -> ModelSource:
        """Parse `model.yaml` (if any) and list version folders; raises with a reason.

        `override` replaces top-level fields for this load only (Triton's load-time `config`).
        """
        check_name(name)
        path = (self.root / name).resolve()
        if path.parent != self.root or not path.is_dir():
            raise ModelNotFound(name)
        raw = None
        cfg = path / CONFIG_FILE
        if cfg.is_file():
            try:
                raw = yaml.safe_load(cfg.read_text())
            except yaml.YAMLError as e:
                raise ModelLoadError(f"model.yaml is not valid YAML: {e}") from None
        where = "model.yaml"
        if isinstance(raw, dict) or raw is None:
            raw = {"network": self.network, **(raw or {})}
        if override:
            if raw is not None and not isinstance(raw, dict):
                raise ModelLoadError("model.yaml must be a mapping")
            raw = {**(raw or {}), **_from_triton_config(override)}
            where = "model configuration (with the load override)"
        try:
            spec = parse_model_config(name, raw)
        except InvalidInput as e:
            raise ModelLoadError(f"invalid {where}: {e.message}") from None
        versions = tuple(
            p.name
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name.isdigit()
        )
        if not versions:
            raise ModelLoadError("no version folders (e.g. 1/) with an artifact")
        return ModelSource(spec, path, versions)


def _from_triton_config(config: dict[str, Any]) -> dict[str, Any]:
    """Triton's JSON ModelConfig spelling -> model.yaml fields (int64s may come as strings)."""
    out = dict(config)
    mbs = out.get("max_batch_size")
    if isinstance(mbs, str) and mbs.isdigit():
        out["max_batch_size"] = int(mbs)
    params = out.get("parameters")
    if isinstance(params, dict):
        out["parameters"] = {
            k: v["string_value"] if isinstance(v, dict) and "string_value" in v else v
            for k, v in params.items()
        }
    for key in ("input", "output"):
        for t in out.get(key) or []:
            if isinstance(t, dict) and isinstance(t.get("dims"), list):
                t["dims"] = [int(d) if isinstance(d, str) and d.lstrip("-").isdigit() else d
                             for d in t["dims"]]  # fmt: skip
    return out
