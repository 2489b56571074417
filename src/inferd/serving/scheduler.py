"""One served version's scheduling: its request queue (`queue.py`) over its replica set
(`replicas.py`), and the supervisor that keeps the replicas healthy and sized.

The supervisor's loops (healing, health checks, autoscaling) live in `control/supervisor.py`;
serving only defines what it needs from one (`Supervisor`), so a version without a supervisor
serves but is neither healed nor scaled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from inferd.core.errors import ModelNotReady, ReplicaFailed
from inferd.core.spec import ModelSpec
from inferd.observability.metrics import VersionMetrics
from inferd.serving.queue import RequestQueue
from inferd.serving.replicas import ReplicaHealth, ReplicaMaker, ReplicaSet, Slot
from inferd.serving.stats import VersionStats
from inferd.workers import Replica, ReplicaResult

__all__ = ["ReplicaHealth", "ReplicaMaker", "Scheduler", "Slot", "Supervisor"]

log = logging.getLogger("inferd.scheduler")


class Supervisor(Protocol):
    """Heals and sizes the replicas of the versions it is given (`control/supervisor.py`)."""

    def supervise(self, scheduler: Scheduler) -> None:
        """Start looking after `scheduler` (called once it serves)."""
        ...

    async def release(self, scheduler: Scheduler) -> None:
        """Stop looking after `scheduler` (called while it stops)."""
        ...


class Scheduler:
    """Queue + replica set for one served version."""

    def __init__(self, spec: ModelSpec, label: str, replicas: list[Replica],
                 make_replica: ReplicaMaker, stats: VersionStats, metrics: VersionMetrics,
                 health_interval_s: float = 5.0,
                 supervisor: Supervisor | None = None) -> None:  # fmt: skip
        self.spec = spec
        self.label = label
        self.replicas = ReplicaSet(spec, label, replicas, make_replica, metrics)
        self.queue = RequestQueue(spec, label, self.replicas, stats, metrics)
        #: How long a replica may sit idle before the supervisor pings it.
        self.health_interval_s = health_interval_s
        #: How often the supervisor samples the load of an autoscaled version.
        self.autoscale_interval_s = 0.25
        #: Set once the version stops: the supervisor's loops end on it.
        self.stopped = asyncio.Event()
        self._supervisor = supervisor

    # ---- what the engine and the supervisor read -------------------------------------------

    @property
    def slots(self) -> list[Slot]:
        return self.replicas.slots

    @property
    def stopping(self) -> bool:
        return self.queue.stopping

    @property
    def active(self) -> int:
        """Requests submitted and not yet answered (queued or running)."""
        return self.queue.active

    @property
    def submitted(self) -> int:
        return self.queue.submitted

    @property
    def demand(self) -> asyncio.Event:
        return self.queue.demand

    def live(self) -> list[Slot]:
        """Slots that serve (not being scaled away)."""
        return self.replicas.live()

    def health(self) -> ReplicaHealth:
        return self.replicas.health(len(self.queue))

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.replicas.start()
        for slot in self.slots:
            self.queue.begin(slot)
        if self._supervisor is not None:
            self._supervisor.supervise(self)

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None,
        parameters: dict[str, Any] | None,
        rows: int,
        timeout_s: float | None,
        on_queued: Callable[[], None] | None = None,
        request_id: str | None = None,
    ) -> ReplicaResult:
        """Queue (or run at once) one request; `request_id` is for composite versions, which
        pass it on to their steps."""
        return await self.queue.submit(inputs, outputs, parameters, rows, timeout_s, on_queued)

    async def revive(self, slot: Slot) -> None:
        """One attempt to replace the slot's dead replica; when it fails and no replica is
        healthy, what is queued fails with the reason rather than wait."""
        if not await self.replicas.revive(slot):
            self._fail_if_none_healthy(slot.last_error)

    async def scale_to(self, n: int) -> None:
        """Add replicas (loaded before they take work) or retire idle ones, to have `n`."""
        async with self.replicas.scaling:
            live = self.live()
            if self.stopping or n == len(live):
                return
            if n < len(live):
                self.replicas.shrink(n)
                return
            added = await self.replicas.grow(n - len(live))
            for slot in added:
                self.queue.begin(slot)
            if not added and not self.live():
                self._fail_if_none_healthy(self.replicas.last_scale_error)

    def _fail_if_none_healthy(self, error: str) -> None:
        if not self.replicas.healthy():
            why = f"model '{self.spec.name}' has no healthy replica: {error}"
            self.queue.fail_all(ReplicaFailed(why))

    async def stop(self) -> None:
        """Stop the loops (a running execution finishes first), fail what is queued, unload."""
        self.queue.stopping = self.replicas.stopping = True
        for event in (self.stopped, self.replicas.attention, self.queue.demand):
            event.set()
        release = self._supervisor.release(self) if self._supervisor else asyncio.sleep(0)
        await asyncio.gather(release, self.queue.stop_loops())
        self.replicas.stop_watching()
        self.queue.fail_all(ModelNotReady(f"model '{self.spec.name}' was unloaded"))
        await self.replicas.unload_all()
