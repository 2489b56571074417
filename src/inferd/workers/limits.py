"""Resource limits of worker processes: CPU pinning and thread pools, GPU visibility, memory.

CPU: a worker with `cpu: N` is pinned to ceil(N) of the CPUs this server may use (replicas take
turns over them) and its math libraries size their thread pools to match. GPU: `gpu: 0` hides
every GPU from the worker; a version the per-GPU budget placed sees only its GPUs. Memory: the
worker's resident set is checked after loading, after each request and at each idle health
check; over the limit the worker is replaced and the reason is reported. (A hard kernel limit
would need cgroups, which need privileges inferd does not assume.)
"""

from __future__ import annotations

import contextlib
import os

from inferd.core.scaling import Resources, cpu_count

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS")  # fmt: skip


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_set(resources: Resources, index: int) -> list[int] | None:
    """The CPUs replica `index` is pinned to, or None when unlimited."""
    if resources.cpu is None:
        return None
    usable = usable_cpus()
    n = min(cpu_count(resources.cpu), len(usable))
    start = (index * n) % len(usable)
    return [usable[(start + i) % len(usable)] for i in range(n)]


def resource_env(resources: Resources, cpus: list[int] | None) -> dict[str, str]:
    """Environment variables that apply a version's resources: thread pools sized to its CPUs,
    GPUs hidden with `gpu: 0`, only the GPUs it was placed on visible."""
    env: dict[str, str] = {}
    if cpus is not None:
        for var in _THREAD_VARS:
            env[var] = str(len(cpus))
    if resources.gpu == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif resources.devices is not None:  # placed by the per-GPU budget: these GPUs, in order
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the numbering NVML (and the budget) uses
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in resources.devices)
    return env


def pin(pid: int, cpus: list[int]) -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or the worker already died
        os.sched_setaffinity(pid, cpus)


def resident_bytes(pid: int) -> int | None:
    """The process's resident set size (Linux /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (Linux /proc: R running, S sleeping, D disk
    wait, T stopped by a signal, t stopped by a tracer, Z zombie), None when unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or parentheses
    after = stat.rpartition(b")")[2].split()
    return after[0].decode("ascii", "replace") if after else None


#: The niceness of the workers of a revision that only shadows: the kernel runs them when the
#: answering revision's workers leave the CPU idle (a shadow must not slow the callers down).
BACKGROUND_NICE = 19


def run_in_background(pid: int) -> None:
    """Lower a worker process's CPU priority to `BACKGROUND_NICE` (ignored if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.setpriority(os.PRIO_PROCESS, pid, BACKGROUND_NICE)


def run_in_foreground(pid: int) -> bool:
    """Give a worker process the normal CPU priority back; False where the server may not
    (raising a priority needs root or CAP_SYS_NICE)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return True
