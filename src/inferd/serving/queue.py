"""A served version's request queue and batcher: admission, deadlines, dynamic batching
(`batching.plan_batch`), the fast path to an idle replica, and one dispatch loop per slot.

Every slot of the replica set runs one loop that takes the next batch from the shared queue, so
the least-loaded (free) replica always takes the next request, and requests that had not
started when a replica died simply run on another (or on its replacement). The loops wait on
events (new work, a slot that changed), never on a polling timer; the only timed wait is a
batch's own queue delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
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
from inferd.serving.batching import RESERVED_PARAMETERS, Pending, plan_batch
from inferd.serving.replicas import ReplicaSet, Slot
from inferd.serving.stats import VersionStats
from inferd.workers import Replica, ReplicaResult


@dataclass(eq=False, slots=True)
class WorkItem:
    """One validated request waiting for (or running on) a replica."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    parameters: dict[str, Any] | None
    pending: Pending
    future: asyncio.Future[ReplicaResult]
    started: bool = False


def batch_key(arrays: dict[str, np.ndarray], outputs: list[str] | None,
              parameters: dict[str, Any] | None) -> Hashable:  # fmt: skip
    """Requests batch together only with the same inputs, per-row shapes, outputs and params."""
    params = {k: v for k, v in (parameters or {}).items() if k not in RESERVED_PARAMETERS}
    return (
        tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(arrays.items())),
        tuple(outputs) if outputs else None,
        orjson.dumps(params, option=orjson.OPT_SORT_KEYS) if params else None,
    )


class RequestQueue:
    """Queue + dispatch loops for one served version, over its replica set."""

    def __init__(self, spec: ModelSpec, label: str, replicas: ReplicaSet, stats: VersionStats,
                 metrics: VersionMetrics,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:  # fmt: skip
        self.spec = spec
        self.label = label
        self.replicas = replicas
        self.stats = stats
        self.metrics = metrics
        self.clock_ns = clock_ns
        self.items: deque[WorkItem] = deque()
        self.stopping = False
        #: Requests submitted and not yet answered (queued or running): the autoscaler's load.
        self.active = 0
        #: Requests submitted so far (the autoscaler tells from it when the last one came).
        self.submitted = 0
        #: Set when a request waits at zero replicas (a cold start is wanted).
        self.demand = asyncio.Event()
        self._wake = asyncio.Event()
        replicas.on_change = self.wake

    def __len__(self) -> int:
        return len(self.items)

    def wake(self) -> None:
        self._wake.set()

    def begin(self, slot: Slot) -> None:
        """Start the dispatch loop of `slot`."""
        slot.loop = asyncio.create_task(self._run(slot), name=f"{self.label}-{slot.index}")

    # ---- submission ------------------------------------------------------------------------

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None,
        parameters: dict[str, Any] | None,
        rows: int,
        timeout_s: float | None,
        on_queued: Callable[[], None] | None = None,
    ) -> ReplicaResult:
        if self.stopping:
            raise ModelNotReady(f"model '{self.spec.name}' is unloading")
        self.active += 1
        self.submitted += 1
        try:
            cap = self.spec.max_queue_size
            if cap and len(self.items) >= cap:
                raise Overloaded(
                    f"model '{self.spec.name}' has {len(self.items)} requests queued "
                    f"(max_queue_size {cap}); retry later"
                )
            if self.spec.batching is None and not self.items:
                slot = self.replicas.idle_slot()
                if slot is not None:  # fast path: a free replica and nobody waiting
                    return await self._direct(slot, inputs, outputs, parameters, timeout_s)
            key = batch_key(inputs, outputs, parameters) if self.spec.batching else None
            loop = asyncio.get_running_loop()
            item = WorkItem(inputs, outputs, parameters, Pending(rows, key, self.clock_ns()),
                            loop.create_future())  # fmt: skip
            self.items.append(item)
            self._wake.set()
            if not self.replicas.slots:  # scaled to zero: start a replica (a cold start)
                self.demand.set()
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
        slot.runs += 1
        try:
            if timeout_s is None:
                result = await replica.infer(inputs, outputs, parameters)
            else:
                async with asyncio.timeout(timeout_s):
                    result = await replica.infer(inputs, outputs, parameters)
        except TimeoutError:
            raise self._deadline(timeout_s, True) from None
        except ReplicaFailed as e:
            self.replicas.mark_dead(slot, e.message)
            raise
        finally:
            slot.busy = False
            if self.items:
                self._wake.set()
        self._executed(1, result)
        return result

    def _executed(self, rows: int, result: ReplicaResult) -> None:
        self.stats.record_execution(rows, result.compute_ns)
        self.metrics.executions.inc()
        self.metrics.batch_size.observe(rows)

    # ---- dispatch loops --------------------------------------------------------------------

    def _serves(self, slot: Slot) -> bool:
        return not self.stopping and not slot.retiring

    def _ready(self, slot: Slot) -> bool:
        return slot.replica is not None and slot.replica.alive and not slot.busy

    async def _take(self, slot: Slot) -> list[WorkItem] | None:
        """The next batch, or None once the slot cannot take it (retiring, stopped, its replica
        gone or busy with a direct call)."""
        gather = True
        while self._serves(slot) and self._ready(slot):
            self._wake.clear()
            while self.items and self.items[0].future.done():
                self.items.popleft()  # cancelled or timed out before it started
            wait: float | None = None
            if self.items:
                if gather and self.spec.batching is not None and self.active > 1:
                    # Under concurrency, one turn of the event loop before planning a batch:
                    # requests whose bytes have already arrived join this batch instead of the
                    # next (with no queue delay configured, the batch would otherwise be what
                    # the wake-up found). A lone request does not pay for it.
                    gather = False
                    await asyncio.sleep(0)
                    continue
                live = [it for it in self.items if not it.future.done()]
                if len(live) != len(self.items):
                    self.items = deque(live)
                picks, wait = plan_batch(
                    [it.pending for it in self.items], self.clock_ns(), self.spec.batching,
                    self.spec.max_batch_size,
                )  # fmt: skip
                if picks:
                    chosen = [self.items[i] for i in picks]
                    for i in reversed(picks):
                        del self.items[i]
                    return chosen
            await _wait(self._wake, wait)
        return None

    async def _run(self, slot: Slot) -> None:
        while self._serves(slot):
            if not self._ready(slot):
                if slot.replica is None or not slot.replica.alive:
                    self.replicas.unwell(slot)  # the supervisor revives it, then wakes this loop
                self._wake.clear()  # a direct call or a revival ends with a wake-up
                await self._wake.wait()
                continue
            batch = await self._take(slot)
            if batch is None:
                continue
            replica = slot.replica
            if not self._serves(slot) or replica is None or not self._ready(slot):
                self._requeue(batch)  # nothing started: leave it to another replica
                continue
            slot.busy = True
            try:
                await self._execute(slot, replica, batch)
            finally:
                slot.busy = False

    def _requeue(self, batch: list[WorkItem]) -> None:
        for item in reversed(batch):
            self.items.appendleft(item)
        self._wake.set()

    async def _execute(self, slot: Slot, replica: Replica, batch: list[WorkItem]) -> None:
        for item in batch:
            item.started = True
        slot.runs += 1
        first = batch[0]
        try:
            if len(batch) == 1:
                inputs = first.inputs
            else:
                inputs = {n: np.concatenate([it.inputs[n] for it in batch]) for n in first.inputs}
            result = await replica.infer(inputs, first.outputs, first.parameters)
        except ReplicaFailed as e:
            self.replicas.mark_dead(slot, e.message)
            fail(batch, e)
            return
        except InferdError as e:
            if len(batch) > 1 and isinstance(e, ModelExecutionError):
                for item in batch:  # isolate the request that broke the batch
                    await self._execute(slot, replica, [item])
                return
            fail(batch, e)
            return
        except Exception as e:
            fail(batch, ModelExecutionError(f"{type(e).__name__}: {e}"))
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
                fail(batch, e)
                return
            if not item.future.done():
                item.future.set_result(ReplicaResult(outs, result.queue_ns, result.compute_ns))
            start = end

    # ---- failing and stopping --------------------------------------------------------------

    def fail_all(self, error: BaseException) -> None:
        fail(list(self.items), error)
        self.items.clear()

    async def stop_loops(self) -> None:
        """Stop the dispatch loops; a running execution finishes first (bounded)."""
        self.stopping = True
        self._wake.set()
        loops = [s.loop for s in self.replicas.slots if s.loop is not None]
        if loops:
            await asyncio.wait(loops, timeout=self.spec.execution_timeout_s)
        for task in loops:
            task.cancel()


def _rows(name: str, arr: np.ndarray, start: int, end: int, total: int) -> np.ndarray:
    if arr.ndim == 0 or arr.shape[0] != total:
        raise ModelExecutionError(
            f"output '{name}' has {arr.shape[0] if arr.ndim else 0} rows for a batch of {total}"
        )
    return arr[start:end]


def fail(items: list[WorkItem], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


async def _wait(event: asyncio.Event, timeout_s: float | None) -> None:
    """Wait for `event` (at most `timeout_s` when given). Unlike `asyncio.wait_for` (a new task
    per call on Python 3.11) this stays in the calling task: it runs once per batch on the hot
    path."""
    if timeout_s is None:
        await event.wait()
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
