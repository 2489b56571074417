"""Replica autoscaling and resource limits as pure types, parsed from `model.yaml` sections.

```yaml
autoscaling:
  min_replicas: 0            # 0 allows scaling to zero when idle
  max_replicas: 4
  target_concurrency: 2      # requests in flight per replica the autoscaler aims for
  scale_to_zero_after_s: 300 # idle time before the last replica goes (min_replicas 0 only)
  downscale_delay_s: 30      # load must stay low this long before replicas are removed
resources:
  cpu: 2                     # CPUs a worker process may run on (pinned, thread pools sized)
  memory: 2GiB               # resident memory a worker may use; over it, it is replaced
  gpu: 0                     # 0 hides GPUs from the worker
```
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class AutoscalingPolicy:
    """Bounds and targets for the number of replicas of each version."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_concurrency: float = 1.0
    scale_to_zero_after_s: float | None = None
    downscale_delay_s: float = 30.0
    #: How far back the load average looks when scaling up.
    upscale_window_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits applied to each worker process of a version (None: unlimited)."""

    cpu: float | None = None
    memory_bytes: int | None = None
    #: GPUs each replica uses (0: none, every GPU hidden from it).
    gpu: int | None = None
    #: GPU memory one replica holds on each of its GPUs (the per-GPU budget reserves it).
    gpu_memory_bytes: int | None = None
    #: The GPUs the per-GPU budget placed the version on (never declared: chosen at each load).
    devices: tuple[int, ...] | None = None

    @property
    def any(self) -> bool:
        return (self.cpu is not None or self.memory_bytes is not None or self.gpu is not None
                or self.gpu_memory_bytes is not None)  # fmt: skip


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10, "m": 10**6,
          "mb": 10**6, "mi": 2**20, "mib": 2**20, "g": 10**9, "gb": 10**9, "gi": 2**30,
          "gib": 2**30, "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40}  # fmt: skip


def parse_bytes(value: Any, field: str) -> int:
    """`1073741824`, `"512MiB"`, `"2GB"` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            n = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
            if n >= 1:
                return int(n)
    raise InvalidInput(f"'{field}' must be a positive size like 1073741824, '512MiB' or '2GB'")


def parse_gpu_budget(value: object, field_name: str) -> int | float:
    """`"20GiB"` or 21474836480 (bytes per GPU), `0.9` or `"90%"` (a fraction of each GPU)."""
    fraction: float | None = None
    if isinstance(value, float):
        fraction = value
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = float(value.strip()[:-1]) / 100
        except ValueError:
            fraction = -1.0
    elif isinstance(value, str):
        try:
            fraction = float(value) if "." in value else None
        except ValueError:
            fraction = None
    if fraction is not None:
        if 0 < fraction <= 1:
            return fraction
    else:
        try:
            return parse_bytes(value, field_name)
        except InvalidInput:
            pass
    raise InvalidInput(
        f"'{field_name}' must be a size like '20GiB' or a fraction of the GPU's memory like "
        "0.9 or '90%'"
    )


def _number(raw: dict[str, Any], key: str, field: str, minimum: float, default: Any) -> Any:
    value = raw.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < minimum:
        raise InvalidInput(f"'{field}.{key}' must be a number >= {minimum:g}")
    return value


def parse_autoscaling(raw: Any) -> AutoscalingPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput("'autoscaling' must be a mapping")
    known = {"min_replicas", "max_replicas", "target_concurrency", "scale_to_zero_after_s",
             "downscale_delay_s", "upscale_window_s"}  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(f"unknown field(s) in 'autoscaling': {', '.join(unknown)}")
    lo: Any = raw.get("min_replicas", 1)
    hi: Any = raw.get("max_replicas", lo)
    for key, v in (("min_replicas", lo), ("max_replicas", hi)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 64:
            raise InvalidInput(f"'autoscaling.{key}' must be an integer from 0 to 64")
    if hi < max(lo, 1):
        raise InvalidInput("'autoscaling.max_replicas' must be >= min_replicas and >= 1")
    target = _number(raw, "target_concurrency", "autoscaling", 0.01, 1.0)
    idle = _number(raw, "scale_to_zero_after_s", "autoscaling", 0.0, None)
    if lo > 0 and idle is not None:
        raise InvalidInput("'autoscaling.scale_to_zero_after_s' needs min_replicas: 0")
    if lo == 0 and idle is None:
        idle = 300.0
    return AutoscalingPolicy(
        min_replicas=lo,
        max_replicas=hi,
        target_concurrency=float(target),
        scale_to_zero_after_s=None if idle is None else float(idle),
        downscale_delay_s=float(_number(raw, "downscale_delay_s", "autoscaling", 0.0, 30.0)),
        upscale_window_s=float(_number(raw, "upscale_window_s", "autoscaling", 0.1, 2.0)),
    )


def parse_resources(raw: Any) -> Resources:
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        raise InvalidInput("'resources' must be a mapping")
    unknown = sorted(set(raw) - {"cpu", "memory", "gpu", "gpu_memory"})
    if unknown:
        raise InvalidInput(f"unknown field(s) in 'resources': {', '.join(unknown)}")
    cpu = _number(raw, "cpu", "resources", 0.01, None)
    gpu = raw.get("gpu")
    if gpu is not None and (not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0):
        raise InvalidInput("'resources.gpu' must be an integer >= 0")
    memory = raw.get("memory")
    gpu_memory = raw.get("gpu_memory")
    if gpu_memory is not None and not gpu:
        raise InvalidInput("'resources.gpu_memory' needs 'resources.gpu' of 1 or more")
    return Resources(
        cpu=None if cpu is None else float(cpu),
        memory_bytes=None if memory is None else parse_bytes(memory, "resources.memory"),
        gpu=gpu,
        gpu_memory_bytes=(
            None if gpu_memory is None else parse_bytes(gpu_memory, "resources.gpu_memory")
        ),
    )


def resources_to_config(r: Resources) -> dict[str, Any] | None:
    if not r.any:
        return None
    out: dict[str, Any] = {}
    if r.cpu is not None:
        out["cpu"] = r.cpu
    if r.memory_bytes is not None:
        out["memory"] = r.memory_bytes
    if r.gpu is not None:
        out["gpu"] = r.gpu
    if r.gpu_memory_bytes is not None:
        out["gpu_memory"] = r.gpu_memory_bytes
    return out


def autoscaling_to_config(p: AutoscalingPolicy | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "min_replicas": p.min_replicas,
        "max_replicas": p.max_replicas,
        "target_concurrency": p.target_concurrency,
        "scale_to_zero_after_s": p.scale_to_zero_after_s,
        "downscale_delay_s": p.downscale_delay_s,
        "upscale_window_s": p.upscale_window_s,
    }


def cpu_count(cpu: float) -> int:
    """Whole CPUs a worker is pinned to for a fractional request (at least one)."""
    return max(1, math.ceil(cpu))
