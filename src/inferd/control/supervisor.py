"""Keeps every served version's replicas healthy and sized, off the request path.

Per version (`supervise`), three loops over its `Scheduler`:

- **healing**, woken by the replica set's `attention` event: a slot that lost its replica gets a
  new one, after the `batching.restart_delay` backoff of its failures in a row;
- **health checks**, every `health_interval_s`: a replica that ran nothing since the last round
  is pinged (a failed ping marks it dead, and healing replaces it);
- **autoscaling**, for versions with an `autoscaling` policy: every `autoscale_interval_s`, or at
  once when a request waits at zero replicas, the load is sampled and the replica count moves to
  what `autoscale.desired_replicas` says.

Time comes from the injected `clock`; the policies themselves read no clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from inferd.serving.autoscale import LoadHistory, desired_replicas
from inferd.serving.batching import restart_delay
from inferd.serving.replicas import Slot
from inferd.serving.scheduler import Scheduler

log = logging.getLogger("inferd.supervisor")


class _Watch:
    """The loops looking after one version."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.tasks: set[asyncio.Task[None]] = set()
        self.reviving: dict[Slot, asyncio.Task[None]] = {}

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=f"{self.scheduler.label}-{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class ReplicaSupervisor:
    """The engine's `serving.scheduler.Supervisor`: healing, health checks and autoscaling."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._watches: dict[Scheduler, _Watch] = {}

    def supervise(self, scheduler: Scheduler) -> None:
        watch = self._watches[scheduler] = _Watch(scheduler)
        watch.spawn(self._heal(watch), "heal")
        watch.spawn(self._check(scheduler), "health")
        if scheduler.spec.autoscaling is not None:
            watch.spawn(self._autoscale(scheduler), "scale")

    async def release(self, scheduler: Scheduler) -> None:
        """Wait for the loops to see the version stopped (a replica being loaded finishes and
        is unloaded; bounded by `execution_timeout_s`), then cancel what is left."""
        watch = self._watches.pop(scheduler, None)
        if watch is None:
            return
        tasks = [*watch.tasks, *watch.reviving.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=scheduler.spec.execution_timeout_s)
            for task in pending:
                task.cancel()

    # ---- healing ---------------------------------------------------------------------------

    async def _heal(self, watch: _Watch) -> None:
        sched = watch.scheduler
        attention = sched.replicas.attention
        while not sched.stopping:
            attention.clear()
            for slot in sched.live():
                if sched.replicas.needs_replica(slot) and slot not in watch.reviving:
                    watch.reviving[slot] = watch.spawn(
                        self._revive(watch, slot), f"revive-{slot.index}"
                    )
            await attention.wait()

    async def _revive(self, watch: _Watch, slot: Slot) -> None:
        sched = watch.scheduler
        try:
            while sched.replicas.needs_replica(slot):
                delay = restart_delay(slot.failures)
                if delay > 0:
                    await _wait(sched.stopped, delay)
                    if not sched.replicas.needs_replica(slot):
                        return
                await sched.revive(slot)
        finally:
            watch.reviving.pop(slot, None)

    # ---- health checks ---------------------------------------------------------------------

    async def _check(self, sched: Scheduler) -> None:
        seen = {slot: slot.runs for slot in sched.slots}
        while not sched.stopping:
            interval = sched.health_interval_s
            await _wait(sched.stopped, interval)
            if sched.stopping:
                return
            idle = []
            for slot in sched.live():
                if seen.get(slot) == slot.runs:
                    idle.append(slot)
                seen[slot] = slot.runs
            seen = {s: n for s, n in seen.items() if s in sched.slots}
            await asyncio.gather(*(sched.replicas.ping(s, min(interval, 10.0)) for s in idle))

    # ---- autoscaling -----------------------------------------------------------------------

    async def _autoscale(self, sched: Scheduler) -> None:
        """Sample the load and move the replica count as `desired_replicas` says."""
        policy = sched.spec.autoscaling
        assert policy is not None
        history = LoadHistory(keep_s=max(policy.downscale_delay_s, policy.upscale_window_s) + 1)
        last_request_at = self.clock()
        counted = sched.submitted
        while not sched.stopping:
            await _wait(sched.demand, sched.autoscale_interval_s)
            sched.demand.clear()
            if sched.stopping:
                return
            now = self.clock()
            if sched.submitted != counted or sched.active:
                last_request_at, counted = now, sched.submitted
            history.add(now, sched.active)
            current = len(sched.live())
            want = desired_replicas(policy, current, history, now, last_request_at)
            if want != current:
                try:
                    await sched.scale_to(want)
                except Exception:  # never let the autoscaler die; the next round tries again
                    log.exception("%s: scaling to %d failed", sched.label, want)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for `event` at most `timeout_s`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
