"""Which loaded versions to unload so that one more fits in the server's memory budget, and on
its GPUs' budgets: a pure decision over sizes, last-use times, pins and requests in flight (no
clock or I/O).

Like ModelMesh's cache of loaded models: the least recently used version that is idle (no
request in flight, no load or unload under way) and not pinned goes first, then the next, until
the one to load fits. A version is only unloaded when it frees memory where memory is short: a
load short of GPU memory does not unload a model that lives in host memory only. When even
unloading every such version would not make room, nothing is unloaded: when the versions in the
way are only busy for now (requests in flight, a load under way), the caller waits for one of
them to become idle and asks again (`Room.wait`); when even they would not make room (pinned
versions hold it, or the version is larger than the budget), it refuses the load with the
reason (`Room.refusal`).

A version that asks for GPUs (`GpuNeed`) is placed as well: on the GPUs with the most room, the
ones that fit without unloading anything first (`Room.devices`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Holder:
    """A version that holds memory now (loaded, or loading with its size reserved)."""

    key: Hashable
    #: Bytes of host memory it holds (measured, declared or estimated: `memory.py` decides).
    size: int
    #: When a request last arrived for it (any clock, as long as all holders use the same one).
    last_used: float
    #: Never unloaded to make room (`pinned: true` in its configuration).
    pinned: bool = False
    #: Requests in flight, or a load or unload under way: not to be unloaded now.
    busy: bool = False
    #: For messages.
    label: str = ""
    #: Bytes it holds on each GPU, by GPU index.
    gpu: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuNeed:
    """What a version to load asks of the GPUs: `count` GPUs with `per_gpu` bytes free on each,
    out of the GPUs the server places models on (`budgets`: each one's budget, by index)."""

    per_gpu: int
    count: int
    budgets: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class Room:
    """The decision: unload `evict` (in that order), then the new version fits (on `devices`,
    when it asked for GPUs); or it does not fit now (`fits` False, `evict` empty, `refusal` says
    why), and `wait` says whether it would once busy versions are idle (worth waiting for) or
    never will while pinned ones stay."""

    evict: tuple[Hashable, ...]
    fits: bool
    #: Bytes of host memory in use now, over every holder.
    used: int
    refusal: str = ""
    wait: bool = False
    devices: tuple[int, ...] = ()


#: The pool of host memory; GPUs are pools keyed by their index.
HOST = "host"
Pool = str | int


def plan_room(
    budget: int | None, holders: Sequence[Holder], need: int, gpu: GpuNeed | None = None
) -> Room:
    """What to unload so that `need` more bytes of host memory fit within `budget` (None: no
    host budget) beside `holders`, and `gpu.per_gpu` on each of `gpu.count` GPUs."""
    used = sum(h.size for h in holders)
    if gpu is not None and gpu.count > len(gpu.budgets):
        have = len(gpu.budgets)
        return Room((), False, used, f"it needs {gpu.count} GPU(s) and this server places "
                    f"models on {have}")  # fmt: skip
    idle = sorted(
        (h for h in holders if not h.pinned and not h.busy),
        key=lambda h: (h.last_used, str(h.key)),
    )
    # what each pool has free now, and what it lacks for this load
    free: dict[Pool, int] = {}
    short: dict[Pool, int] = {}
    if budget is not None:
        free[HOST] = budget - used
        short[HOST] = need - free[HOST]
    devices = _place(gpu, holders, idle) if gpu is not None else ()
    if gpu is not None:
        for d in devices:
            free[d] = gpu.budgets[d] - sum(h.gpu.get(d, 0) for h in holders)
            short[d] = gpu.per_gpu - free[d]
    evict: list[Hashable] = []
    for h in idle:
        if all(n <= 0 for n in short.values()):
            break
        frees = _holds(h)
        if any(short[p] > 0 and frees.get(p, 0) > 0 for p in short):
            evict.append(h.key)
            for p in short:
                short[p] -= frees.get(p, 0)
    if all(n <= 0 for n in short.values()):
        return Room(tuple(evict), True, used, devices=devices)
    # busy ones go idle in time; pinned ones never leave
    later = {p: n - sum(_holds(h).get(p, 0) for h in holders if h.busy and not h.pinned)
             for p, n in short.items()}  # fmt: skip
    pool = next(p for p, n in short.items() if n > 0)
    if isinstance(pool, int) and gpu is not None:
        limit, wanted = gpu.budgets[pool], gpu.per_gpu
    else:
        limit, wanted = budget or 0, need
    refusal = _refusal(pool, limit, holders, wanted, short[pool])
    return Room((), False, used, refusal, wait=all(n <= 0 for n in later.values()))


def _holds(h: Holder) -> dict[Pool, int]:
    out: dict[Pool, int] = {HOST: h.size}
    for d, n in h.gpu.items():
        out[d] = n
    return out


def _place(gpu: GpuNeed, holders: Sequence[Holder], idle: Sequence[Holder]) -> tuple[int, ...]:
    """The GPUs to load on: those where the version fits without unloading anything first,
    then those where unloading idle versions would make the most room; ties by index."""

    def free(d: int) -> int:
        return gpu.budgets[d] - sum(h.gpu.get(d, 0) for h in holders)

    def key(d: int) -> tuple[bool, int, int]:
        room = free(d)
        return (room < gpu.per_gpu, -(room + sum(h.gpu.get(d, 0) for h in idle)), d)

    return tuple(sorted(sorted(gpu.budgets, key=key)[: gpu.count]))


def _refusal(pool: Pool, budget: int, holders: Sequence[Holder], need: int, short: int) -> str:
    what = "memory budget" if pool == HOST else f"budget of GPU {pool}"
    if need > budget:
        return f"it needs {_mib(need)}, more than the whole {what} of {_mib(budget)}"
    held_by = [h for h in holders if _holds(h).get(pool, 0) > 0]
    pinned = sorted(h.label or str(h.key) for h in held_by if h.pinned)
    busy = sorted(h.label or str(h.key) for h in held_by if h.busy and not h.pinned)
    held = []
    if pinned:
        held.append(f"pinned: {', '.join(pinned)}")
    if busy:
        held.append(f"busy: {', '.join(busy)}")
    why = f" ({'; '.join(held)})" if held else ""
    return (
        f"it needs {_mib(need)} and the {what} of {_mib(budget)} has only {_mib(need - short)} "
        f"free even after unloading every idle model; the rest is held by models that cannot "
        f"be unloaded{why}"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
