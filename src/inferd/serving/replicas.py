"""The replica set of one served version: its slots, their health, and the operations that
change them (mark dead, revive, grow, retire, stop).

No loop runs here on a timer: the request queue (`queue.py`) runs work on the slots, and the
supervisor (`control/supervisor.py`) decides when to revive, ping and resize. The set signals
what they wait for: `attention` when a slot lost its replica, `on_change` when a slot died, came
back, was added or became free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from inferd.core.errors import InferdError
from inferd.core.spec import ModelSpec
from inferd.observability.metrics import VersionMetrics
from inferd.workers import Replica

log = logging.getLogger("inferd.scheduler")

ReplicaMaker = Callable[[int], Replica]


@dataclass(eq=False)
class Slot:
    """A replica position: its current replica and its failure history."""

    index: int
    replica: Replica | None
    failures: int = 0
    restarts: int = 0
    busy: bool = False
    watcher: asyncio.Task[None] | None = None
    #: The queue's dispatch loop for this slot (`RequestQueue.begin`).
    loop: asyncio.Task[None] | None = None
    last_error: str = ""
    #: Scaling down: the loop ends after its current execution and the replica is unloaded.
    retiring: bool = False
    #: Executions started here (a slot that ran none since the last look is pinged instead).
    runs: int = 0


@dataclass
class ReplicaHealth:
    """Counts reported by the repository index and metrics."""

    total: int
    healthy: int
    restarts: int
    queued: int
    last_error: str = ""


def _nothing() -> None:
    return None


class ReplicaSet:
    """The slots of one version and what changes them; it never waits on a clock."""

    def __init__(self, spec: ModelSpec, label: str, replicas: list[Replica],
                 make_replica: ReplicaMaker, metrics: VersionMetrics) -> None:  # fmt: skip
        self.spec = spec
        self.label = label
        self.slots = [Slot(i, r) for i, r in enumerate(replicas)]
        self.make_replica = make_replica
        self.metrics = metrics
        self.stopping = False
        self.last_scale_error = ""
        #: Set when a slot lost its replica or holds a dead one: the supervisor's cue to heal.
        self.attention = asyncio.Event()
        #: Called when a slot died, came back, was added or retired, or became free.
        self.on_change: Callable[[], None] = _nothing
        #: Held while the replica count changes (`Scheduler.scale_to`).
        self.scaling = asyncio.Lock()
        self._next_index = len(self.slots)
        self._background: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for slot in self.slots:
            self._watch(slot)
        self.publish()

    # ---- queries ---------------------------------------------------------------------------

    def live(self) -> list[Slot]:
        """Slots that serve (not being scaled away)."""
        return [s for s in self.slots if not s.retiring]

    def healthy(self) -> int:
        return sum(1 for s in self.live() if s.replica is not None and s.replica.alive)

    def idle_slot(self) -> Slot | None:
        """A slot whose live replica runs nothing now (the fast path's target)."""
        for slot in self.slots:
            if (not slot.busy and not slot.retiring and slot.replica is not None
                    and slot.replica.alive):  # fmt: skip
                return slot
        return None

    def needs_replica(self, slot: Slot) -> bool:
        """The slot serves but has no live replica: it is to be revived."""
        if self.stopping or slot.retiring or slot not in self.slots:
            return False
        return slot.replica is None or not slot.replica.alive

    def health(self, queued: int) -> ReplicaHealth:
        errors = [s.last_error for s in self.slots if s.last_error]
        if self.last_scale_error:
            errors.append(self.last_scale_error)
        return ReplicaHealth(len(self.live()), self.healthy(), sum(s.restarts for s in self.slots),
                             queued, errors[-1] if errors else "")  # fmt: skip

    def publish(self) -> None:
        self.metrics.replicas_healthy.set(self.healthy())

    # ---- failures --------------------------------------------------------------------------

    def _watch(self, slot: Slot) -> None:
        replica = slot.replica
        if replica is None:
            return

        async def watch() -> None:
            reason = await replica.wait_exit()
            if slot.replica is replica and not self.stopping:
                self.mark_dead(slot, reason)

        slot.watcher = asyncio.create_task(watch())

    def mark_dead(self, slot: Slot, reason: str) -> None:
        if slot.replica is None:
            return
        log.warning("replica %s-%d failed: %s", self.label, slot.index, reason)
        slot.last_error = reason
        dead, slot.replica = slot.replica, None
        self._spawn(quietly_unload(dead))
        self.publish()
        self.attention.set()
        self.on_change()

    def unwell(self, slot: Slot) -> None:
        """The queue found the slot's replica not alive: ask for it to be healed."""
        self.attention.set()

    async def ping(self, slot: Slot, timeout_s: float) -> None:
        """Health-check an idle replica; one that fails it is marked dead, one found not alive
        is handed to healing."""
        replica = slot.replica
        if replica is None or slot.busy:
            return
        if not replica.alive:
            self.unwell(slot)
            return
        slot.busy = True
        try:
            await replica.ping(timeout_s)
        except InferdError as e:
            self.mark_dead(slot, e.message)
        finally:
            slot.busy = False
            self.on_change()

    async def revive(self, slot: Slot) -> bool:
        """One attempt to give `slot` a new replica; False (and `last_error`) when it failed."""
        replica = self.make_replica(slot.index)
        try:
            await replica.load()
        except InferdError as e:
            slot.failures += 1
            slot.last_error = f"restart failed: {e.message}"
            log.warning("replica %s-%d %s", self.label, slot.index, slot.last_error)
            await quietly_unload(replica)
            return False
        if self.stopping or slot.retiring or slot not in self.slots:
            await quietly_unload(replica)  # stopped or scaled away while it loaded
            return True
        old, slot.replica, slot.failures = slot.replica, replica, 0
        if old is not None:  # found not alive before its exit was reported
            self._spawn(quietly_unload(old))
        if slot.watcher is not None:
            slot.watcher.cancel()
        slot.restarts += 1
        self.metrics.restarts.inc()
        self._watch(slot)
        self.publish()
        self.on_change()
        log.info("replica %s-%d restarted", self.label, slot.index)
        return True

    # ---- scaling ---------------------------------------------------------------------------

    async def grow(self, count: int) -> list[Slot]:
        """Load `count` new replicas; the slots of those that loaded (not yet serving)."""
        indexes = list(range(self._next_index, self._next_index + count))
        self._next_index += count
        replicas = [self.make_replica(i) for i in indexes]
        results = await asyncio.gather(*(r.load() for r in replicas), return_exceptions=True)
        added: list[Slot] = []
        for index, replica, result in zip(indexes, replicas, results, strict=True):
            if isinstance(result, BaseException) or self.stopping:
                await quietly_unload(replica)
                if isinstance(result, BaseException):
                    msg = result.message if isinstance(result, InferdError) else repr(result)
                    self.last_scale_error = f"scale-up failed: {msg}"
                    log.warning("%s %s", self.label, self.last_scale_error)
                continue
            slot = Slot(index, replica)
            self.slots.append(slot)
            self._watch(slot)
            added.append(slot)
        if added:
            self.last_scale_error = ""
            log.info("%s scaled up to %d replica(s)", self.label, len(self.live()))
        self.publish()
        return added

    def shrink(self, n: int) -> None:
        """Retire live slots (idle ones first, newest first) down to `n`."""
        live = self.live()
        victims = sorted(live, key=lambda s: (s.busy, -s.index))[: len(live) - n]
        for slot in victims:
            slot.retiring = True
            self._spawn(self._retire(slot))
        self.on_change()
        self.publish()
        log.info("%s scaled down to %d replica(s)", self.label, n)

    async def _retire(self, slot: Slot) -> None:
        """Let the slot finish what it runs, then unload its replica."""
        if slot.loop is not None:
            await asyncio.wait([slot.loop], timeout=self.spec.execution_timeout_s)
        if slot.watcher is not None:
            slot.watcher.cancel()
        replica, slot.replica = slot.replica, None
        if slot in self.slots:
            self.slots.remove(slot)
        if replica is not None:
            await quietly_unload(replica)
        self.publish()

    # ---- stopping --------------------------------------------------------------------------

    def stop_watching(self) -> None:
        self.stopping = True
        for slot in self.slots:
            if slot.watcher is not None:
                slot.watcher.cancel()

    async def unload_all(self) -> None:
        await asyncio.gather(*(quietly_unload(s.replica) for s in self.slots if s.replica))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def quietly_unload(replica: Replica) -> None:
    try:
        await replica.unload()
    except Exception:  # it is being discarded anyway
        log.debug("unloading a discarded replica failed", exc_info=True)
