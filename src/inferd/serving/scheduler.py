"""Per-version request queue: admission, deadlines, dynamic batching, replica dispatch, healing.

Every replica of a version runs one loop that takes the next batch from the shared queue, so
the least-loaded (free) replica always takes the next request, and requests that had not
started when a replica died simply run on another (or on its replacement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inferd.core.errors import (
    DeadlineExceeded,
    InferdError,
    ModelExecutionError,
    ModelNotReady,
    Overloaded,
    ReplicaFailed,
)
from inferd.core.spec import ModelSpec
from inferd.observability.metrics import VersionMetrics
from inferd.serving.autoscale import LoadHistory, desired_replicas
from inferd.serving.batching import RESERVED_PARAMETERS, Pending, plan_batch, restart_delay
from inferd.serving.stats import VersionStats
from inferd.workers import Replica, ReplicaResult

log = logging.getLogger("inferd.scheduler")

ReplicaMaker = Callable[[int], Replica]


@dataclass(eq=False, slots=True)
class WorkItem:
    """One validated request waiting for (or running on) a replica."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    parameters: dict[str, Any] | None
    pending: Pending
    future: asyncio.Future[ReplicaResult]
    started: bool = False


@dataclass(eq=False)
class Slot:
    """A replica position: its current replica and its failure history."""

    index: int
    replica: Replica | None
    failures: int = 0
    restarts: int = 0
    busy: bool = False
    watcher: asyncio.Task[None] | None = None
    loop: asyncio.Task[None] | None = None
    last_error: str = ""
    #: Scaling down: the loop ends after its current execution and the replica is unloaded.
    retiring: bool = False


def batch_key(arrays: dict[str, np.ndarray], outputs: list[str] | None,
              parameters: dict[str, Any] | None) -> Hashable:  # fmt: skip
    """Requests batch together only with the same inputs, per-row shapes, outputs and params."""
    params = {k: v for k, v in (parameters or {}).items() if k not in RESERVED_PARAMETERS}
    return (
        tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(arrays.items())),
        tuple(outputs) if outputs else None,
        orjson.dumps(params, option=orjson.OPT_SORT_KEYS) if params else None,
    )


@dataclass
class ReplicaHealth:
    """Counts reported by the repository index and metrics."""

    total: int
    healthy: int
    restarts: int
    queued: int
    last_error: str = ""


@dataclass(eq=False)
class Scheduler:
    """Queue + replica loops for one served version."""

    spec: ModelSpec
    label: str
    slots: list[Slot]
    make_replica: ReplicaMaker
    stats: VersionStats
    metrics: VersionMetrics
    health_interval_s: float = 5.0
    queue: deque[WorkItem] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _unloading: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: bool = False
    #: Requests submitted and not yet answered (queued or running): the autoscaler's load.
    active: int = 0
    last_request_at: float = 0.0
    clock: Callable[[], float] = time.monotonic
    autoscale_interval_s: float = 0.25
    _next_index: int = 0
    _scaling: asyncio.Lock = field(default_factory=asyncio.Lock)
    _demand: asyncio.Event = field(default_factory=asyncio.Event)
    _autoscaler: asyncio.Task[None] | None = None
    last_scale_error: str = ""

    @classmethod
    def create(cls, spec: ModelSpec, label: str, replicas: list[Replica],
               make_replica: ReplicaMaker, stats: VersionStats, metrics: VersionMetrics,
               health_interval_s: float = 5.0) -> Scheduler:  # fmt: skip
        slots = [Slot(i, r) for i, r in enumerate(replicas)]
        sched = cls(spec, label, slots, make_replica, stats, metrics, health_interval_s)
        sched._next_index = len(slots)
        sched.last_request_at = sched.clock()
        return sched

    def start(self) -> None:
        for slot in self.slots:
            self._begin(slot)
        if self.spec.autoscaling is not None:
            self._autoscaler = asyncio.create_task(self._autoscale(), name=f"{self.label}-scale")
        self._publish()

    def _begin(self, slot: Slot) -> None:
        self._watch(slot)
        slot.loop = asyncio.create_task(self._run(slot), name=f"{self.label}-{slot.index}")

    def live(self) -> list[Slot]:
        """Slots that serve (not being scaled away)."""
        return [s for s in self.slots if not s.retiring]

    # ---- submission ------------------------------------------------------------------------

    def health(self) -> ReplicaHealth:
        live = self.live()
        healthy = sum(1 for s in live if s.replica is not None and s.replica.alive)
        errors = [s.last_error for s in self.slots if s.last_error]
        if self.last_scale_error:
            errors.append(self.last_scale_error)
        return ReplicaHealth(len(live), healthy, sum(s.restarts for s in self.slots),
                             len(self.queue), errors[-1] if errors else "")  # fmt: skip

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None,
        parameters: dict[str, Any] | None,
        rows: int,
        timeout_s: float | None,
        on_queued: Callable[[], None] | None = None,
    ) -> ReplicaResult:
        if self._stopping:
            raise ModelNotReady(f"model '{self.spec.name}' is unloading")
        # the autoscaler's load: requests submitted and not answered yet (queued or running)
        self.active += 1
        self.last_request_at = self.clock()
        try:
            cap = self.spec.max_queue_size
            if cap and len(self.queue) >= cap:
                raise Overloaded(
                    f"model '{self.spec.name}' has {len(self.queue)} requests queued "
                    f"(max_queue_size {cap}); retry later"
                )
            if self.spec.batching is None and not self.queue:
                slot = self._idle_slot()
                if slot is not None:  # fast path: a free replica and nobody waiting
                    return await self._direct(slot, inputs, outputs, parameters, timeout_s)
            key = batch_key(inputs, outputs, parameters) if self.spec.batching else None
            loop = asyncio.get_running_loop()
            item = WorkItem(inputs, outputs, parameters, Pending(rows, key, time.monotonic_ns()),
                            loop.create_future())  # fmt: skip
            self.queue.append(item)
            self._wake.set()
            if not self.slots:  # scaled to zero: start a replica (a cold start)
                self._demand.set()
            if on_queued is not None:
                on_queued()
            try:
                if timeout_s is None:
                    return await item.future
                async with asyncio.timeout(timeout_s):
                    return await item.future
            except TimeoutError:
                raise self._deadline(timeout_s, item.started) from None
            finally:
                if not item.future.done():
                    item.future.cancel()  # not started: the loops skip it; started: result dropped
        finally:
            self.active -= 1

    def _deadline(self, timeout_s: float | None, started: bool) -> DeadlineExceeded:
        state = "while running" if started else "before it started; it was dropped"
        return DeadlineExceeded(
            f"request to '{self.spec.name}' exceeded its timeout of {timeout_s:g} s {state}"
        )

    def _idle_slot(self) -> Slot | None:
        for slot in self.slots:
            if (not slot.busy and not slot.retiring and slot.replica is not None
                    and slot.replica.alive):  # fmt: skip
                return slot
        return None

    async def _direct(
        self,
        slot: Slot,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None,
        parameters: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> ReplicaResult:
        """Run on `slot`'s replica in the caller's task: no queue hop, no extra task switch."""
        replica = slot.replica
        assert replica is not None
        slot.busy = True
        try:
            if timeout_s is None:
                result = await replica.infer(inputs, outputs, parameters)
            else:
                async with asyncio.timeout(timeout_s):
                    result = await replica.infer(inputs, outputs, parameters)
        except TimeoutError:
            raise self._deadline(timeout_s, True) from None
        except ReplicaFailed as e:
            self._mark_dead(slot, e.message)
            raise
        finally:
            slot.busy = False
            if self.queue:
                self._wake.set()
        self._executed(1, result)
        return result

    def _executed(self, rows: int, result: ReplicaResult) -> None:
        self.stats.record_execution(rows, result.compute_ns)
        self.metrics.executions.inc()
        self.metrics.batch_size.observe(rows)

    # ---- replica loops ---------------------------------------------------------------------

    async def _take(self, slot: Slot) -> list[WorkItem] | None:
        """The next batch, or None after `health_interval_s` without work (or when retiring)."""
        idle_until = time.monotonic() + self.health_interval_s
        gather = True
        while not self._stopping and not slot.retiring:
            self._wake.clear()
            while self.queue and self.queue[0].future.done():
                self.queue.popleft()  # cancelled or timed out before it started
            if self.queue:
                if gather and self.spec.batching is not None and self.active > 1:
                    # Under concurrency, one turn of the event loop before planning a batch:
                    # requests whose bytes have already arrived join this batch instead of the
                    # next (with no queue delay configured, the batch would otherwise be what
                    # the wake-up found). A lone request does not pay for it.
                    gather = False
                    await asyncio.sleep(0)
                    continue
                live = [it for it in self.queue if not it.future.done()]
                if len(live) != len(self.queue):
                    self.queue = deque(live)
                picks, wait = plan_batch(
                    [it.pending for it in self.queue], time.monotonic_ns(), self.spec.batching,
                    self.spec.max_batch_size,
                )  # fmt: skip
                if picks:
                    chosen = [self.queue[i] for i in picks]
                    for i in reversed(picks):
                        del self.queue[i]
                    return chosen
            else:
                wait = idle_until - time.monotonic()
                if wait <= 0:
                    return None
            await _wait(self._wake, wait)
        return None

    async def _run(self, slot: Slot) -> None:
        while not self._stopping and not slot.retiring:
            if slot.replica is None or not slot.replica.alive:
                await self._revive(slot)
                continue
            if slot.busy:  # a direct call is using this replica; wait until it is done
                self._wake.clear()
                await _wait(self._wake, self.health_interval_s)
                continue
            batch = await self._take(slot)
            if self._stopping or slot.retiring:
                self._requeue(batch or [])
                return
            replica = slot.replica
            if replica is None:  # it died while this loop waited for work
                self._requeue(batch or [])
                continue
            if batch is None:
                try:
                    await replica.ping(min(self.health_interval_s, 10.0))
                except InferdError as e:
                    self._mark_dead(slot, e.message)
                continue
            if not replica.alive or slot.busy:  # nothing started: leave it to another replica
                self._requeue(batch)
                continue
            slot.busy = True
            try:
                await self._execute(slot, replica, batch)
            finally:
                slot.busy = False

    def _requeue(self, batch: list[WorkItem]) -> None:
        for item in reversed(batch):
            self.queue.appendleft(item)
        self._wake.set()

    async def _execute(self, slot: Slot, replica: Replica, batch: list[WorkItem]) -> None:
        for item in batch:
            item.started = True
        first = batch[0]
        try:
            if len(batch) == 1:
                inputs = first.inputs
            else:
                inputs = {n: np.concatenate([it.inputs[n] for it in batch]) for n in first.inputs}
            result = await replica.infer(inputs, first.outputs, first.parameters)
        except ReplicaFailed as e:
            self._mark_dead(slot, e.message)
            _fail(batch, e)
            return
        except InferdError as e:
            if len(batch) > 1 and isinstance(e, ModelExecutionError):
                for item in batch:  # isolate the request that broke the batch
                    await self._execute(slot, replica, [item])
                return
            _fail(batch, e)
            return
        except Exception as e:
            _fail(batch, ModelExecutionError(f"{type(e).__name__}: {e}"))
            return
        rows = sum(it.pending.rows for it in batch) if self.spec.max_batch_size > 0 else 1
        self._executed(rows, result)
        if len(batch) == 1:
            if not first.future.done():
                first.future.set_result(result)
            return
        start = 0
        for item in batch:
            end = start + item.pending.rows
            try:
                outs = {n: _rows(n, a, start, end, rows) for n, a in result.outputs.items()}
            except ModelExecutionError as e:
                _fail(batch, e)
                return
            if not item.future.done():
                item.future.set_result(ReplicaResult(outs, result.queue_ns, result.compute_ns))
            start = end

    # ---- healing ---------------------------------------------------------------------------

    def _watch(self, slot: Slot) -> None:
        replica = slot.replica
        if replica is None:
            return

        async def watch() -> None:
            reason = await replica.wait_exit()
            if slot.replica is replica and not self._stopping:
                self._mark_dead(slot, reason)

        slot.watcher = asyncio.create_task(watch())

    def _mark_dead(self, slot: Slot, reason: str) -> None:
        if slot.replica is None:
            return
        log.warning("replica %s-%d failed: %s", self.label, slot.index, reason)
        slot.last_error = reason
        dead, slot.replica = slot.replica, None
        self._unloading.add(task := asyncio.create_task(_quietly_unload(dead)))
        task.add_done_callback(self._unloading.discard)
        self._publish()
        self._wake.set()

    async def _revive(self, slot: Slot) -> None:
        await asyncio.sleep(restart_delay(slot.failures))
        if self._stopping or slot.retiring:
            return
        replica = self.make_replica(slot.index)
        try:
            await replica.load()
        except InferdError as e:
            slot.failures += 1
            slot.last_error = f"restart failed: {e.message}"
            log.warning("replica %s-%d %s", self.label, slot.index, slot.last_error)
            await _quietly_unload(replica)
            self._fail_if_none_healthy(slot.last_error)
            return
        slot.replica, slot.failures = replica, 0
        slot.restarts += 1
        self.metrics.restarts.inc()
        self._watch(slot)
        self._publish()
        log.info("replica %s-%d restarted", self.label, slot.index)

    def _fail_if_none_healthy(self, error: str) -> None:
        if not any(s.replica is not None and s.replica.alive for s in self.live()):
            why = f"model '{self.spec.name}' has no healthy replica: {error}"
            _fail(list(self.queue), ReplicaFailed(why))
            self.queue.clear()

    def _publish(self) -> None:
        self.metrics.replicas_healthy.set(self.health().healthy)

    # ---- scaling ---------------------------------------------------------------------------

    async def scale_to(self, n: int) -> None:
        """Add replicas (loaded before they take work) or retire idle ones, to have `n`."""
        async with self._scaling:
            live = self.live()
            if self._stopping or n == len(live):
                return
            if n > len(live):
                await self._grow(n - len(live))
                return
            victims = sorted(live, key=lambda s: (s.busy, -s.index))[: len(live) - n]
            for slot in victims:
                slot.retiring = True
                self._unloading.add(task := asyncio.create_task(self._retire(slot)))
                task.add_done_callback(self._unloading.discard)
            self._wake.set()
            self._publish()
            log.info("%s scaled down to %d replica(s)", self.label, n)

    async def _grow(self, count: int) -> None:
        indexes = list(range(self._next_index, self._next_index + count))
        self._next_index += count
        replicas = [self.make_replica(i) for i in indexes]
        results = await asyncio.gather(*(r.load() for r in replicas), return_exceptions=True)
        added = 0
        for index, replica, result in zip(indexes, replicas, results, strict=True):
            if isinstance(result, BaseException) or self._stopping:
                await _quietly_unload(replica)
                if isinstance(result, BaseException):
                    msg = result.message if isinstance(result, InferdError) else repr(result)
                    self.last_scale_error = f"scale-up failed: {msg}"
                    log.warning("%s %s", self.label, self.last_scale_error)
                continue
            slot = Slot(index, replica)
            self.slots.append(slot)
            self._begin(slot)
            added += 1
        if added:
            self.last_scale_error = ""
            log.info("%s scaled up to %d replica(s)", self.label, len(self.live()))
        elif not self.live():
            self._fail_if_none_healthy(self.last_scale_error)
        self._publish()

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
            await _quietly_unload(replica)
        self._publish()

    async def _autoscale(self) -> None:
        """Sample the load and move the replica count as `desired_replicas` says."""
        policy = self.spec.autoscaling
        assert policy is not None
        history = LoadHistory(keep_s=max(policy.downscale_delay_s, policy.upscale_window_s) + 1)
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._demand.wait(), self.autoscale_interval_s)
            self._demand.clear()
            now = self.clock()
            history.add(now, self.active)
            want = desired_replicas(policy, len(self.live()), history, now, self.last_request_at)
            if want != len(self.live()):
                try:
                    await self.scale_to(want)
                except Exception:  # never let the autoscaler die; the next round tries again
                    log.exception("%s: scaling to %d failed", self.label, want)

    async def stop(self) -> None:
        """Stop the loops (a running execution finishes first), fail what is queued, unload."""
        self._stopping = True
        self._wake.set()
        if self._autoscaler is not None:
            self._autoscaler.cancel()
        loops = [s.loop for s in self.slots if s.loop is not None]
        if loops:
            await asyncio.wait(loops, timeout=self.spec.execution_timeout_s)
        for task in loops:
            task.cancel()
        for slot in self.slots:
            if slot.watcher is not None:
                slot.watcher.cancel()
        _fail(list(self.queue), ModelNotReady(f"model '{self.spec.name}' was unloaded"))
        self.queue.clear()
        await asyncio.gather(*(_quietly_unload(s.replica) for s in self.slots if s.replica))


def _rows(name: str, arr: np.ndarray, start: int, end: int, total: int) -> np.ndarray:
    if arr.ndim == 0 or arr.shape[0] != total:
        raise ModelExecutionError(
            f"output '{name}' has {arr.shape[0] if arr.ndim else 0} rows for a batch of {total}"
        )
    return arr[start:end]


def _fail(items: list[WorkItem], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


async def _quietly_unload(replica: Replica) -> None:
    try:
        await replica.unload()
    except Exception:  # it is being discarded anyway
        log.debug("unloading a discarded replica failed", exc_info=True)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for `event` at most `timeout_s`. Unlike `asyncio.wait_for` (a new task per call on
    Python 3.11) this stays in the calling task: it runs once per batch on the hot path."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
