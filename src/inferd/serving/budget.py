"""Which loaded versions to unload so that one more fits in the server's memory budget: a pure
decision over sizes, last-use times, pins and requests in flight (no clock or I/O).

Like ModelMesh's cache of loaded models: the least recently used version that is idle (no
request in flight, no load or unload under way) and not pinned goes first, then the next, until
the one to load fits. When even unloading every such version would not make room, nothing is
unloaded: when the versions in the way are only busy for now (requests in flight, a load under
way), the caller waits for one of them to become idle and asks again (`Room.wait`); when even
they would not make room (pinned versions hold it, or the version is larger than the budget), it
refuses the load with the reason (`Room.refusal`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Holder:
    """A version that holds memory now (loaded, or loading with its size reserved)."""

    key: Hashable
    #: Bytes it holds (measured, declared or estimated: `serving/memory.py` decides).
    size: int
    #: When a request last arrived for it (any clock, as long as all holders use the same one).
    last_used: float
    #: Never unloaded to make room (`pinned: true` in its configuration).
    pinned: bool = False
    #: Requests in flight, or a load or unload under way: not to be unloaded now.
    busy: bool = False
    #: For messages.
    label: str = ""


@dataclass(frozen=True, slots=True)
class Room:
    """The decision: unload `evict` (in that order), then the new version fits; or it does not
    fit now (`fits` False, `evict` empty, `refusal` says why), and `wait` says whether it would
    once busy versions are idle (worth waiting for) or never will while pinned ones stay."""

    evict: tuple[Hashable, ...]
    fits: bool
    #: Bytes in use now, over every holder.
    used: int
    refusal: str = ""
    wait: bool = False


def plan_room(budget: int, holders: Sequence[Holder], need: int) -> Room:
    """What to unload so that `need` more bytes fit within `budget` beside `holders`."""
    used = sum(h.size for h in holders)
    free = budget - used
    if need <= free:
        return Room((), True, used)
    candidates = sorted(
        (h for h in holders if not h.pinned and not h.busy),
        key=lambda h: (h.last_used, str(h.key)),
    )
    evict: list[Hashable] = []
    for h in candidates:
        if need <= free:
            break
        evict.append(h.key)
        free += h.size
    if need <= free:
        return Room(tuple(evict), True, used)
    # busy ones go idle in time; pinned ones never leave
    later = free + sum(h.size for h in holders if h.busy and not h.pinned)
    return Room((), False, used, _refusal(budget, holders, need, free), wait=need <= later)


def _refusal(budget: int, holders: Sequence[Holder], need: int, free: int) -> str:
    if need > budget:
        return f"it needs {_mib(need)}, more than the whole memory budget of {_mib(budget)}"
    pinned = sorted(h.label or str(h.key) for h in holders if h.pinned)
    busy = sorted(h.label or str(h.key) for h in holders if h.busy and not h.pinned)
    held = []
    if pinned:
        held.append(f"pinned: {', '.join(pinned)}")
    if busy:
        held.append(f"busy: {', '.join(busy)}")
    why = f" ({'; '.join(held)})" if held else ""
    return (
        f"it needs {_mib(need)} and the memory budget of {_mib(budget)} has only {_mib(free)} "
        f"free even after unloading every idle model; the rest is held by models that cannot "
        f"be unloaded{why}"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
