"""The GPUs a server places models on under a per-GPU memory budget, and what each process
holds on them, read from NVML (the NVIDIA driver's management library, `nvidia-ml-py`).

`serving.gpus` names the GPUs (default: every GPU NVML finds); `serving.gpu_memory_budget`
is what models may hold on each, a size or a fraction of the GPU's memory. Indices are NVML's
(PCI bus order): a worker placed on GPU 1 is started with `CUDA_DEVICE_ORDER=PCI_BUS_ID` and
`CUDA_VISIBLE_DEVICES=1`, so that CUDA numbers the GPUs the same way.

Where NVML is missing (no NVIDIA driver, no GPU), nothing is measured: the budget counts what
each version declares (`resources.gpu_memory`), or estimates from its files.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InvalidInput

log = logging.getLogger("inferd.engine")

#: pid -> {GPU index: bytes the process holds on it}
Usage = dict[int, dict[int, int]]


@functools.cache
def _nvml() -> Any | None:
    """The initialised NVML module, or None where it cannot be used: initialised once per
    process (every budget decision reads usage through it), the failure logged once."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable GPU
        log.info("no GPU found by NVML (%s)", e)
        return None
    return pynvml


def detect() -> dict[int, int]:
    """Every GPU NVML finds: index -> its memory in bytes ({} without NVML)."""
    nvml = _nvml()
    if nvml is None:
        return {}
    out = {}
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        out[i] = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
    return out


def nvml_usage(indices: Iterable[int]) -> Usage:
    """What each process holds on the GPUs `indices` (NVML's per-process compute usage)."""
    nvml = _nvml()
    out: Usage = {}
    if nvml is None:
        return out
    for i in indices:
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            used = p.usedGpuMemory
            if used is not None:  # None: not reported (some drivers, some containers)
                out.setdefault(int(p.pid), {})[i] = int(used)
    return out


def no_usage(indices: Iterable[int]) -> Usage:
    """Nothing measured (no NVML)."""
    return {}


@dataclass
class Gpus:
    """The GPUs this server places models on: each one's budget (by index), and how to read what
    processes hold on them (`usage`, injected: NVML where present)."""

    budgets: dict[int, int]
    usage: Callable[[Sequence[int]], Usage] = no_usage

    @classmethod
    def from_settings(
        cls, budget: int | float, indices: Sequence[int] | None, found: dict[int, int]
    ) -> Gpus:
        """The budget of each GPU: `budget` bytes, or that fraction of its memory (which needs
        NVML to read it). `indices` None: every GPU `found`."""
        chosen = sorted(found) if indices is None else sorted(set(indices))
        budgets = {}
        for i in chosen:
            if isinstance(budget, float):
                if i not in found:
                    raise InvalidInput(
                        f"'serving.gpu_memory_budget' is a fraction, and GPU {i}'s memory "
                        "cannot be read (no NVML); give a size such as '20GiB'"
                    )
                budgets[i] = int(found[i] * budget)
            else:
                budgets[i] = budget
        log.info("per-GPU memory budget: %s", ", ".join(f"GPU {i}: {n} bytes" for i, n in
                 budgets.items()) or "no GPU found, nothing placed")  # fmt: skip
        return cls(budgets, nvml_usage if found else no_usage)
