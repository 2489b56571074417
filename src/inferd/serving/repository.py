"""A model repository folder, as Triton's: DIR/<model>/model.yaml, DIR/<model>/<version>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from inferd.core.errors import InvalidInput, ModelLoadError, ModelNotFound
from inferd.core.spec import ModelSpec, check_name, parse_model_config

CONFIG_FILE = "model.yaml"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's files are and its parsed configuration."""

    spec: ModelSpec
    path: Path
    versions: tuple[str, ...]

    def version_path(self, version: str) -> Path:
        return self.path / version


class ModelRepository:
    """Reads model folders; never writes. Names are checked so nothing escapes the root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

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

    def source(self, name: str) -> ModelSource:
        """Parse `model.yaml` (if any) and list version folders; raises with a reason."""
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
        try:
            spec = parse_model_config(name, raw)
        except InvalidInput as e:
            raise ModelLoadError(f"invalid model.yaml: {e.message}") from None
        versions = tuple(
            p.name
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name.isdigit()
        )
        if not versions:
            raise ModelLoadError("no version folders (e.g. 1/) with an artifact")
        return ModelSource(spec, path, versions)
