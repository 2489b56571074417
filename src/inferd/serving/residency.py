"""Loading and unloading versions under the server's memory budget (`memory.py` decides and
counts; this module acts): a request to a version that is not loaded waits for its load, one
load shared by every request that arrives meanwhile, after the versions the budget picked were
unloaded to make room.

An unloaded version stays known (`ServedVersion`, its signature, statistics and metrics): it only
swaps its scheduler for one with no replicas that never starts, and back, so a request that
looked it up a moment ago still holds the right object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from inferd.core.errors import InferdError, ModelLoadError, ModelNotReady, Overloaded
from inferd.core.spec import ModelSpec, TensorSpec
from inferd.observability.metrics import ServingMetrics, VersionMetrics
from inferd.serving.memory import MemoryBudget
from inferd.serving.scheduler import ReplicaMaker, Scheduler
from inferd.serving.stats import VersionStats
from inferd.workers import Loaded, Replica

if TYPE_CHECKING:
    from inferd.serving.models import ServedVersion

log = logging.getLogger("inferd.engine")

#: How the model manager builds a version's scheduler (spec, version, replicas, maker, stats,
#: metrics); not started.
SchedulerFactory = Callable[
    [ModelSpec, str, list[Replica], ReplicaMaker, VersionStats, VersionMetrics], Scheduler
]


class Residency:
    """Loads versions that are not loaded, and unloads the ones the budget picks."""

    def __init__(
        self, budget: MemoryBudget, metrics: ServingMetrics, scheduler: SchedulerFactory
    ) -> None:
        self.budget = budget
        self.metrics = metrics
        self.scheduler = scheduler

    async def activate(self, sv: ServedVersion) -> None:
        """Load a version that is not loaded (memory budget) for a request that waits for it;
        every request that arrives meanwhile waits for the same load. A load that fails is
        reported as the model not being ready, with the reason; no room, as Overloaded."""
        try:
            await self.activation(sv)
        except (Overloaded, ModelNotReady):
            raise
        except InferdError as e:
            raise ModelNotReady(f"model '{sv.name}' could not be loaded: {e.message}") from None

    async def activation(self, sv: ServedVersion, counted: bool = True) -> None:
        """Wait for `sv` to be loaded, starting the load if none is under way. `counted`: the
        load counts in `inferd_model_loads_total` (an explicit load counts once per model, by
        its caller)."""
        while not sv.resident:
            if sv.retired:
                raise ModelNotReady(f"model '{sv.name}' version {sv.version} was unloaded")
            if sv.activation is None:
                sv.activation = asyncio.ensure_future(self._load_resident(sv, counted))
                sv.activation.add_done_callback(_loaded_or_failed(sv))
            # shielded: one waiter giving up (a client that left) does not cancel the load
            await asyncio.shield(sv.activation)

    async def _load_resident(self, sv: ServedVersion, counted: bool) -> None:
        budget, make = self.budget, sv.make
        assert make is not None
        if sv.unloading is not None:  # unloaded just now to make room: let that finish first
            await asyncio.wait([sv.unloading])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget.wait_s
        while (victims := budget.reserve(sv)) is None:  # Overloaded when it can never fit
            left = deadline - loop.time()
            if left <= 0:
                raise budget.refuse(sv)
            await _any_idle(budget.busy(), left)
        if sv.devices and sv.make_on is not None:  # placed on GPUs by the per-GPU budget
            make = sv.make_on(sv.devices)
        try:
            await self.evict_all(victims)
            replicas, loaded, inputs, outputs = await start_replicas(sv.spec, make)
        except BaseException as e:
            budget.released(sv)
            sv.load_error = e.message if isinstance(e, InferdError) else repr(e)
            if counted:
                self.metrics.model_loads.labels(sv.name, "failure").inc()
            log.warning("model %s version %s failed to load: %s", sv.name, sv.version,
                        sv.load_error)  # fmt: skip
            raise
        scheduler = self.scheduler(sv.spec, sv.version, replicas, make, sv.stats, sv.metrics)
        if sv.retired:  # its model dropped it while it loaded
            await scheduler.replicas.unload_all()
            budget.released(sv)
            return
        dormant, sv.scheduler = sv.scheduler, scheduler
        if not sv.spec.inputs or not sv.spec.outputs:
            sv.set_signature(inputs, outputs)
        sv.platform = sv.spec.platform or loaded.platform
        scheduler.start()
        dormant.queue.fail_all(ModelNotReady(f"model '{sv.name}' was reloaded"))  # none: safety
        sv.resident, sv.load_error = True, ""
        sv.used_at = budget.clock()  # just loaded: not the first to go
        if counted:
            self.metrics.model_loads.labels(sv.name, "success").inc()
        self.metrics.model_ready.labels(sv.name, sv.version).set(1)
        log.info("model %s version %s loaded (memory budget)", sv.name, sv.version)
        over = budget.loaded(sv)
        if over:  # it came out larger than reserved: back under the budget, off this request
            self._spawn_evictions(over)

    async def evict_all(self, victims: list[ServedVersion]) -> None:
        tasks = self._spawn_evictions(victims)
        if tasks:
            await asyncio.wait(tasks)

    def _spawn_evictions(self, victims: list[ServedVersion]) -> list[asyncio.Task[None]]:
        tasks = []
        for victim in victims:
            # off the books and not serving from now on, before anything awaits: a request
            # that arrives from here on waits for a new load
            victim.resident, victim.evicted = False, True
            self.metrics.model_ready.labels(victim.name, victim.version).set(0)
            victim.unloading = asyncio.create_task(self._evict(victim))
            tasks.append(victim.unloading)
        return tasks

    async def _evict(self, sv: ServedVersion) -> None:
        """Unload an idle version to make room; it stays known and loads again on demand."""
        assert sv.make is not None
        live = sv.scheduler
        sv.scheduler = self.scheduler(sv.spec, sv.version, [], sv.make, sv.stats, sv.metrics)
        try:
            await live.stop()
        except Exception:  # its memory is what matters; the replicas are gone either way
            log.exception("unloading %s version %s failed", sv.name, sv.version)
        finally:
            sv.unloading = None
        log.info("model %s version %s unloaded to make room (memory budget)", sv.name, sv.version)


async def start_replicas(
    spec: ModelSpec, make: ReplicaMaker
) -> tuple[list[Replica], Loaded, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Load `spec.instances` replicas; the effective signature (declared, else the model's)."""
    replicas = [make(i) for i in range(spec.instances)]
    results = await asyncio.gather(*(r.load() for r in replicas), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    loaded = results[0]
    if failure is not None or not isinstance(loaded, Loaded):
        await asyncio.gather(*(r.unload() for r in replicas), return_exceptions=True)
        if isinstance(failure, InferdError):
            raise failure
        raise ModelLoadError(f"{type(failure).__name__}: {failure}")
    inputs = spec.batched(spec.inputs) if spec.inputs else loaded.inputs
    outputs = spec.batched(spec.outputs) if spec.outputs else loaded.outputs
    if not inputs or not outputs:
        await asyncio.gather(*(r.unload() for r in replicas), return_exceptions=True)
        raise ModelLoadError("the model declares no inputs or outputs; list them in model.yaml")
    return replicas, loaded, inputs, outputs


async def _any_idle(versions: list[ServedVersion], timeout_s: float) -> None:
    """Wait until one of `versions` has no request in flight or finished loading."""
    mine: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(v.idle(timeout_s)) for v in versions if v.inflight > 0
    ]
    loads: list[asyncio.Future[Any]] = [
        a for v in versions if (a := v.activation) is not None and not v.inflight
    ]
    try:
        if mine or loads:
            await asyncio.wait([*mine, *loads], timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        else:  # busy only by queued work being handed over: look again shortly
            await asyncio.sleep(min(timeout_s, 0.05))
    finally:
        for task in mine:  # never the shared loads: other requests wait for them
            task.cancel()


def _loaded_or_failed(sv: ServedVersion) -> Callable[[asyncio.Future[None]], None]:
    """Clears the version's shared load once it ended; its error was seen by its waiters (or
    is dropped here when every one of them left)."""

    def done(future: asyncio.Future[None]) -> None:
        sv.activation = None
        if not future.cancelled():
            future.exception()

    return done
