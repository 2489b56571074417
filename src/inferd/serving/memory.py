"""The server's memory budget: how much memory each loaded version holds (the one place that
decides it), which versions make room for a load (`budget.plan_room`, pure), and the metrics.

What a version holds, per replica, in this order:
1. `resources.memory` of its `model.yaml` when set: the most its worker may use (it is replaced
   over it), so reserving it is safe even as the worker grows;
2. otherwise, once loaded, what its worker processes hold: their resident set (`VmRSS`), the
   average over its live process replicas, measured at each decision;
3. otherwise (thread replicas, which share the server's process, or before a first load) the
   size of its model files, the best estimate available without loading it.
A loaded version holds that times its live replicas (at least one: a version its autoscaler
scaled to zero keeps its place, since a request may start a replica without asking the budget).
A version about to load reserves `instances` times (1), or (2) from its previous load, or (3),
and is measured again once loaded; when it came out larger than reserved and the total is now
over the budget, idle versions are unloaded until it is not.

With a per-GPU budget (`gpus.py`) a version that asks for GPUs (`resources.gpu`) is placed on
the GPUs with room, and holds on each of them, per replica: `resources.gpu_memory` when set;
otherwise, once loaded, what its worker processes hold there (NVML), averaged over its replicas;
otherwise the size of its files. A version that asks for no GPU but whose workers use one anyway
(a runtime's default device) is counted where NVML sees it, so the budget stays true; it is
never placed.

The mechanics of loading and unloading stay in `models.py`; this module only decides and counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.core.errors import Overloaded
from inferd.observability.metrics import MemoryMetrics
from inferd.serving.budget import GpuNeed, Holder, plan_room
from inferd.serving.gpus import Gpus, Usage
from inferd.workers.limits import resident_bytes

if TYPE_CHECKING:
    from inferd.serving.models import ServedVersion

log = logging.getLogger("inferd.engine")


def files_bytes(path: Path | None) -> int:
    """The size of the files under `path` (a version folder), 0 when unknown."""
    if path is None:
        return 0
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


class MemoryBudget:
    """The memory budget of one server: which versions hold memory, and how much.

    `clock` stamps nothing itself; it is what `ServedVersion.used_at` is read against, injected
    so that the eviction order is testable with a fake clock.
    """

    def __init__(
        self,
        budget_bytes: int | None,
        metrics: MemoryMetrics,
        wait_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        gpus: Gpus | None = None,
    ) -> None:
        #: The host memory budget (None: only GPUs are budgeted).
        self.budget_bytes = budget_bytes
        self.gpus = gpus
        self.metrics = metrics
        #: How long a load waits for room that busy versions hold before it is refused.
        self.wait_s = wait_s
        self.clock = clock
        #: Why a version's last reservation could not be made (its 503 after waiting).
        self._why: dict[ServedVersion, str] = {}
        #: Versions that hold memory: loaded, or loading with their size reserved.
        self._held: dict[ServedVersion, int] = {}
        #: Of those, the ones loading now (not to be unloaded, not yet serving).
        self._loading: set[ServedVersion] = set()
        #: The last per-replica size measured of each version (kept across its unloads).
        self._measured: dict[ServedVersion, int] = {}
        #: What each version holds on each GPU (by index), as `_held` for host memory.
        self._held_gpu: dict[ServedVersion, dict[int, int]] = {}
        #: The last per-replica, per-GPU size measured of each version.
        self._measured_gpu: dict[ServedVersion, int] = {}
        if budget_bytes is not None:
            metrics.budget.set(budget_bytes)
        for index, size in (gpus.budgets if gpus is not None else {}).items():
            metrics.gpu_budget.labels(str(index)).set(size)

    # ---- sizes: the one place that decides them ----------------------------------------------

    def replica_bytes(self, sv: ServedVersion) -> int:
        """What one replica of `sv` holds (see the module docstring for the order)."""
        declared = sv.spec.resources.memory_bytes
        if declared is not None:
            return declared
        rss = [
            n
            for slot in sv.scheduler.live()
            if (pid := getattr(slot.replica, "pid", None)) is not None
            and (n := resident_bytes(pid)) is not None
        ]
        if rss:
            self._measured[sv] = sum(rss) // len(rss)
        return self._measured.get(sv) or sv.files_bytes

    def held_bytes(self, sv: ServedVersion) -> int:
        """What a loaded version holds now: one replica's size times its live replicas."""
        return self.replica_bytes(sv) * max(1, len(sv.scheduler.live()))

    def need_bytes(self, sv: ServedVersion) -> int:
        """What loading `sv` will take, before it is loaded."""
        declared = sv.spec.resources.memory_bytes
        one = declared if declared is not None else self._measured.get(sv) or sv.files_bytes
        return one * max(1, sv.spec.instances)

    def gpu_need(self, sv: ServedVersion) -> GpuNeed | None:
        """What loading `sv` asks of the GPUs: None when it is not placed (no per-GPU budget,
        no `resources.gpu`, or replicas on threads)."""
        r = sv.spec.resources
        if self.gpus is None or not r.gpu or sv.make_on is None:
            return None
        one = r.gpu_memory_bytes or self._measured_gpu.get(sv) or sv.files_bytes
        return GpuNeed(one * max(1, sv.spec.instances), r.gpu, self.gpus.budgets)

    def held_gpu(self, sv: ServedVersion, usage: Usage) -> dict[int, int]:
        """What a loaded version holds on each GPU now (see the module docstring)."""
        replicas = max(1, len(sv.scheduler.live()))
        declared = sv.spec.resources.gpu_memory_bytes
        if sv.devices and declared is not None:
            return {d: declared * replicas for d in sv.devices}
        seen: dict[int, int] = {}
        for slot in sv.scheduler.live():
            pid = getattr(slot.replica, "pid", None)
            for d, n in usage.get(pid, {}).items() if pid is not None else ():
                seen[d] = seen.get(d, 0) + n
        if seen:
            if sv.devices:
                self._measured_gpu[sv] = max(seen.values()) // replicas
            return seen
        return self._held_gpu.get(sv, {})

    # ---- decisions ---------------------------------------------------------------------------

    def _holders(self, keep: ServedVersion | None = None) -> list[Holder]:
        usage = self.gpus.usage(list(self.gpus.budgets)) if self.gpus is not None else {}
        out = []
        for sv, size in self._held.items():
            gpu = self._held_gpu.get(sv, {})
            if sv not in self._loading:
                size = self._held[sv] = self.held_bytes(sv)
                if self.gpus is not None:
                    gpu = self._held_gpu[sv] = self.held_gpu(sv, usage)
            busy = (sv is keep or sv in self._loading or sv.inflight > 0
                    or sv.scheduler.active > 0)  # fmt: skip
            out.append(Holder(sv, size, sv.used_at, sv.pinned, busy, f"{sv.name}:{sv.version}",
                              gpu))  # fmt: skip
        return out

    def reserve(self, sv: ServedVersion) -> list[ServedVersion] | None:
        """Reserve room for loading `sv`: the versions to unload first (already taken off the
        books: the caller unloads them before loading); None when busy versions hold the room
        for now (wait for one of `busy()`, then ask again); Overloaded (503) with the reason
        when it cannot fit while the pinned versions stay.

        Synchronous on purpose: the decision and the reservation happen with no request or
        other load in between."""
        need = self.need_bytes(sv)
        gpu = self.gpu_need(sv)
        room = plan_room(self.budget_bytes, self._holders(), need, gpu)
        if not room.fits:
            self._why[sv] = f"model '{sv.name}' cannot be loaded: {room.refusal}"
            if room.wait:
                return None
            raise self.refuse(sv)
        self._why.pop(sv, None)
        victims = self._evict(room.evict)
        self._held[sv] = need
        if gpu is not None:
            sv.devices = room.devices
            self._held_gpu[sv] = {d: gpu.per_gpu for d in room.devices}
        self._loading.add(sv)
        self._publish()
        return victims

    def refuse(self, sv: ServedVersion) -> Overloaded:
        """The 503 of a load that found no room (counted)."""
        self.metrics.refusals.labels(sv.name).inc()
        why = self._why.pop(sv, f"model '{sv.name}' cannot be loaded: no room")
        return Overloaded(why, 5.0)

    def busy(self) -> list[ServedVersion]:
        """Versions that hold memory and are busy (requests in flight, loading): one of them
        going idle may make room."""
        return [
            sv
            for sv in self._held
            if not sv.pinned and (sv in self._loading or sv.inflight > 0 or sv.scheduler.active > 0)
        ]

    def loaded(self, sv: ServedVersion) -> list[ServedVersion]:
        """`sv` serves now: measure it. Returns idle versions to unload when it turned out
        larger than reserved and the total is over the budget (taken off the books)."""
        self._loading.discard(sv)
        self._held[sv] = self.held_bytes(sv)
        self.metrics.model_bytes.labels(sv.name, sv.version).set(self._held[sv])
        room = plan_room(self.budget_bytes, self._holders(keep=sv), 0, self._over_gpus())
        victims = self._evict(room.evict)
        if not room.fits:
            log.warning("memory budget exceeded: %s", room.refusal)
        self._publish()
        return victims

    def _over_gpus(self) -> GpuNeed | None:
        """After a load: every GPU is checked (nothing more to place: need 0 on each)."""
        if self.gpus is None or not self.gpus.budgets:
            return None
        return GpuNeed(0, len(self.gpus.budgets), self.gpus.budgets)

    def released(self, sv: ServedVersion) -> None:
        """`sv` failed to load, was unloaded or retired: it holds nothing any more."""
        self._drop(sv)
        self._publish()

    def forget(self, sv: ServedVersion) -> None:
        """`sv` is gone for good (its model reloaded or removed)."""
        self.released(sv)
        self._measured.pop(sv, None)
        self._measured_gpu.pop(sv, None)
        self._why.pop(sv, None)

    def _evict(self, keys: tuple[object, ...]) -> list[ServedVersion]:
        victims = [sv for sv in self._held if sv in keys]
        for victim in victims:
            self._drop(victim)
            self.metrics.evictions.labels(victim.name).inc()
        return victims

    def _drop(self, sv: ServedVersion) -> None:
        self._held.pop(sv, None)
        self._held_gpu.pop(sv, None)
        self._loading.discard(sv)
        try:
            self.metrics.model_bytes.remove(sv.name, sv.version)
        except KeyError:
            pass

    # ---- reporting ---------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return sum(self._held.values())

    def loaded_versions(self) -> list[ServedVersion]:
        return [sv for sv in self._held if sv not in self._loading]

    def gpu_used_bytes(self) -> dict[int, int]:
        """Bytes held on each GPU of the per-GPU budget, as it counts them."""
        out = dict.fromkeys(self.gpus.budgets if self.gpus is not None else (), 0)
        for held in self._held_gpu.values():
            for d, n in held.items():
                if d in out:
                    out[d] += n
        return out

    def _publish(self) -> None:
        self.metrics.used.set(self.used_bytes)
        self.metrics.loaded.set(len(self._held) - len(self._loading))
        if self.gpus is not None:
            on: dict[int, int] = dict.fromkeys(self.gpus.budgets, 0)
            for held in self._held_gpu.values():
                for d in held:
                    if d in on:
                        on[d] += 1
            for d, n in self.gpu_used_bytes().items():
                self.metrics.gpu_used.labels(str(d)).set(n)
                self.metrics.gpu_models.labels(str(d)).set(on[d])
