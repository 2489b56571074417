"""The served models and their versions: load, reload, unload, probe, add, look up.

A version's replicas come from the replica factory (`factory.py`, keyed by runtime kind); each
loaded version gets a `Scheduler` (queue + replica set) handed to the supervisor, if any.

Under a memory budget (`memory.py`) a version may be known but not loaded (`resident` False):
never loaded yet, or unloaded to make room. It keeps its identity, signature, statistics and a
scheduler with no replicas; the first request to it loads it (`activate`, one load shared by all
who wait) after the budget's least recently used idle versions were unloaded (`_evict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from inferd.core.errors import InferdError, ModelLoadError, ModelNotFound, ModelNotReady
from inferd.core.spec import ModelSpec, TensorSpec, check_name, version_key
from inferd.core.tensors import InferenceRequest, InferenceResponse
from inferd.core.traffic import Split
from inferd.observability.metrics import ServingMetrics, VersionMetrics
from inferd.runtimes import detect_runtime
from inferd.runtimes.base import Runtime
from inferd.serving.composite import CompositeScheduler, EnsembleScheduler, StepRunner
from inferd.serving.factory import (
    ReplicaPlan,
    placed_replica_maker,
    replica_maker,
    runtime_replicas,
)
from inferd.serving.memory import MemoryBudget, files_bytes
from inferd.serving.pipeline import PipelineScheduler
from inferd.serving.repository import ModelRepository, ModelSource
from inferd.serving.residency import Residency, start_replicas
from inferd.serving.scheduler import ReplicaMaker, Scheduler, Supervisor
from inferd.serving.stats import VersionStats
from inferd.workers import Replica
from inferd.workers.isolation import WorkerIsolation

log = logging.getLogger("inferd.engine")


#: How long a generative revision that stops being served waits, idle, before it unloads: the
#: longest a generation routed to it may take to start its stream.
ROUTED_GRACE_S = 0.5


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class InFlight:
    """A count of requests in flight (`inflight`; `enter()` and `leave()` change it) that
    unloading and draining await reaching zero (`idle()`), never poll. A request pays two integer
    updates: the future that waiters await exists only while someone waits."""

    _inflight: int
    _drained: asyncio.Future[None] | None

    def _init_inflight(self) -> None:
        self._inflight = 0
        self._drained = None

    @property
    def inflight(self) -> int:
        return self._inflight

    def enter(self) -> None:
        self._inflight += 1

    def leave(self) -> None:
        self._inflight -= 1
        if not self._inflight and self._drained is not None:
            self._wake_drained()

    def _wake_drained(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight (True) or `timeout_s` passed (False)."""
        if not self._inflight:
            return True
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._drained)  # shared: one waiter leaving keeps it
        except TimeoutError:
            return False
        return True


@dataclass(eq=False)
class ServedVersion(InFlight):
    """A loaded version: its scheduler (queue + replicas), signature, stats and metrics."""

    name: str
    version: str
    spec: ModelSpec
    runtime_name: str
    platform: str
    scheduler: Scheduler
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metrics: VersionMetrics
    stats: VersionStats = field(default_factory=VersionStats)
    #: Builds its replicas again when it is loaded anew (memory budget); None: never is.
    make: ReplicaMaker | None = None
    #: Builds them on given GPUs (per-GPU budget); None: they cannot be placed (threads).
    make_on: Callable[[tuple[int, ...]], ReplicaMaker] | None = None
    #: The GPUs its current (or last) load was placed on; () when not placed.
    devices: tuple[int, ...] = ()
    #: Its files (the memory budget's estimate before a load).
    path: Path | None = None
    #: Loaded and serving. False only under a memory budget: not loaded yet, or unloaded to
    #: make room; the next request loads it (`ModelManager.activate`).
    resident: bool = True
    #: When a request last arrived for it (the memory budget unloads the least recent first).
    used_at: float = 0.0
    clock: Callable[[], float] = time.monotonic
    #: Bytes of its files, read once (`memory.files_bytes`).
    files_bytes: int = 0
    #: Why its last load failed ("" after a good one).
    load_error: str = ""
    #: Unloaded at least once to make room (for the reason the index shows).
    evicted: bool = False
    #: Its model dropped it (reloaded with other files, unloaded): never to be loaded again.
    retired: bool = False
    #: The load under way, shared by every request that waits for it.
    activation: asyncio.Future[None] | None = None
    #: The unload under way (making room), awaited before it is loaded again.
    unloading: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.set_signature(self.inputs, self.outputs)
        self._init_inflight()  # requests running on this version now

    def set_signature(
        self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
    ) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.input_map = {t.name: t for t in inputs}
        self.output_map = {t.name: t for t in outputs}
        self.output_names = [t.name for t in outputs]

    def enter(self) -> None:
        self.used_at = self.clock()
        self._inflight += 1

    @property
    def pinned(self) -> bool:
        """Never unloaded to make room: `pinned: true`, or an LLM (a generation cannot wait
        for a load)."""
        return self.spec.pinned or self.runtime_name == "llm"

    @property
    def state(self) -> tuple[str, str]:
        """(state, reason) for the repository index."""
        if self.resident:
            return "READY", ""
        if self.activation is not None:
            return "LOADING", ""
        if self.load_error:
            return "UNAVAILABLE", self.load_error
        if self.evicted:
            return "UNAVAILABLE", "unloaded to make room (memory budget); loads on its next request"
        return "UNAVAILABLE", "not loaded yet (memory budget); loads on its first request"


@dataclass(eq=False)
class ServedModel:
    """A model name: its served versions and its state (with the reason when unavailable)."""

    name: str
    spec: ModelSpec | None
    state: ModelState = ModelState.LOADING
    reason: str = ""
    required: bool = True
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    default: ServedVersion | None = None
    #: How requests that name no version are shared among `versions` (the data plane routes
    #: by it); None: they all go to `default`.
    traffic: Split | None = None

    def refresh_default(self) -> None:
        """The version of callers that do not route: the split's primary, else the newest."""
        if self.traffic is not None and self.traffic.primary in self.versions:
            self.default = self.versions[self.traffic.primary]
            return
        ordered = sorted(self.versions, key=version_key)
        self.default = self.versions[ordered[-1]] if ordered else None


Run = Callable[[ServedVersion, InferenceRequest], Awaitable[InferenceResponse]]


async def _no_steps(name: str, version: str | None, request: InferenceRequest
                    ) -> InferenceResponse:  # fmt: skip
    raise ModelNotReady("this server runs no ensemble steps")


class ModelManager:
    """Owns the served models: their lifecycle and versions, one lock per model name."""

    def __init__(self, metrics: ServingMetrics, repository: ModelRepository | None,
                 isolation: WorkerIsolation, health_interval_s: float, drain_timeout_s: float,
                 supervisor: Supervisor | None,
                 budget: MemoryBudget | None = None) -> None:  # fmt: skip
        self.metrics = metrics
        #: None: every model loads at once and stays loaded (no memory budget).
        self.budget = budget
        self.residency = Residency(budget, metrics, self._scheduler) if budget else None
        self.repository = repository
        self.isolation = isolation
        self.health_interval_s = health_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.supervisor = supervisor
        self._models: dict[str, ServedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: How ensembles run their steps (set by the engine; the data plane routes them).
        self.steps: StepRunner = _no_steps

    async def load_repository(self) -> None:
        """Load every model of the repository concurrently; failures are kept with reasons.

        Under a memory budget only pinned models load now; the others are registered (their
        configuration read, their signature as declared) and load on their first request."""
        names = self.repository.names() if self.repository else []
        for name in names:
            self._models.setdefault(name, ServedModel(name, None))
        if self.budget is not None:
            names = [n for n in names if not await self._register(n)]
        await asyncio.gather(*(self._load_quietly(n) for n in names))

    async def _register(self, name: str) -> bool:
        """Register a repository model to load on demand; False when it is to load now
        (pinned, an LLM) or its configuration fails (the load reports why)."""
        assert self.repository is not None
        try:
            source = self.repository.source(name)
        except InferdError:
            return False
        spec = source.spec
        if spec.pinned or spec.runtime == "llm" or spec.ensemble or spec.pipeline:
            return False
        wanted = spec.version_policy.select(list(source.versions))
        if not wanted:
            return False
        try:
            versions = {v: await self._dormant(source.spec_of(v), v, source) for v in wanted}
        except InferdError:
            return False
        if any(sv.pinned for sv in versions.values()):  # a detected LLM: it loads now
            return False
        model = self._models[name]
        model.spec, model.versions, model.traffic = spec, versions, source.traffic
        model.required = spec.required
        model.refresh_default()
        model.state, model.reason = ModelState.READY, ""
        return True

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.load(name)
        except InferdError as e:
            log.warning("model %s failed to load: %s", name, e.message)

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(n) for n in list(self._models)), return_exceptions=True)

    def waiting(self) -> list[str]:
        """Required models that are not READY."""
        return [m.name for m in self._models.values() if m.required and m.state != "READY"]

    # ---- model control ---------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load(self, name: str, config: dict[str, Any] | None = None) -> ServedModel:
        if self.repository is None:
            raise ModelNotFound(name)
        check_name(name)
        async with self._lock(name):
            model = self._models.get(name)
            try:
                source = self.repository.source(name, config)
            except ModelNotFound:
                if model is not None and not model.versions:
                    del self._models[name]  # gone from the repository: stop reporting it
                raise
            except InferdError as e:
                self._failed(name, model, e.message)
                raise ModelLoadError(f"failed to load '{name}': {e.message}") from None
            return await self._load_locked(name, model, source)

    async def load_source(self, source: ModelSource) -> ServedModel:
        name = check_name(source.spec.name)
        async with self._lock(name):
            return await self._load_locked(name, self._models.get(name), source)

    async def _load_locked(
        self, name: str, model: ServedModel | None, source: ModelSource
    ) -> ServedModel:
        if model is None:
            model = self._models[name] = ServedModel(name, source.spec)
        if not model.versions:
            model.state = ModelState.LOADING
        model.required = source.spec.required
        return await self._load_versions(model, source)

    async def forget(self, name: str) -> None:
        if name in self._models:
            await self.unload(name)
            self._models.pop(name, None)

    async def probe(
        self, source: ModelSource, version: str, sample: InferenceRequest | None, run: Run
    ) -> tuple[ServedVersion, InferenceResponse | str | None]:
        """Load one version in a throw-away worker process, optionally `run` one request on it,
        unload. Never touches served models or their metrics."""
        name = f"probe-{uuid.uuid4().hex[:12]}"
        real = source.spec.name
        spec = replace(source.spec, name=name, instances=1, instance_kind="process",
                       autoscaling=None)  # fmt: skip
        try:  # outside the memory budget: it lives only as long as this call
            sv = await self._load_version(spec, version, source, budgeted=False)
        except InferdError as e:  # messages name the model, not the throw-away probe
            raise ModelLoadError(e.message.replace(name, real)) from None
        try:
            response: InferenceResponse | str | None = None
            if sample is not None:
                try:
                    response = await run(sv, sample)
                except InferdError as e:
                    response = e.message.replace(name, real)
            return sv, response
        finally:
            await sv.scheduler.stop()
            self.metrics.forget(name, version)

    async def _load_versions(self, model: ServedModel, source: ModelSource) -> ServedModel:
        spec = source.spec
        wanted = spec.version_policy.select(list(source.versions))
        if not wanted:
            self._failed(model.name, model, "the version policy selects no version on disk")
            raise ModelLoadError(f"failed to load '{model.name}': no version selected")
        keep = source.keep_unchanged
        kept = {v: sv for v, sv in model.versions.items()
                if keep and v in wanted and sv.spec == source.spec_of(v)}  # fmt: skip
        fresh = [v for v in wanted if v not in kept]
        results = await asyncio.gather(
            *(self._load_version(source.spec_of(v), v, source) for v in fresh),
            return_exceptions=True,
        )
        loaded: dict[str, ServedVersion] = dict(kept)
        errors = []
        for v, r in zip(fresh, results, strict=True):
            if isinstance(r, ServedVersion):
                loaded[v] = r
            else:
                msg = r.message if isinstance(r, InferdError) else f"{type(r).__name__}: {r}"
                errors.append(f"version {v}: {msg}")
        if errors:
            for v, sv in loaded.items():
                if v not in kept:
                    await self.retire(sv)
            reason = "; ".join(errors)
            self.metrics.model_loads.labels(model.name, "failure").inc()
            self._failed(model.name, model, reason)
            raise ModelLoadError(f"failed to load '{model.name}': {reason}")
        old = model.versions
        model.spec, model.versions, model.traffic = spec, loaded, source.traffic
        model.refresh_default()
        model.state, model.reason = ModelState.READY, ""
        self.metrics.model_loads.labels(model.name, "success").inc()
        for sv in loaded.values():
            self.metrics.model_ready.labels(model.name, sv.version).set(1)
        for v, sv in old.items():
            if loaded.get(v) is sv:
                continue  # kept: still serving
            if v not in loaded:
                self.metrics.forget(model.name, v)
            # a generation routed to it just before the change may not have started its stream
            # yet (an OpenAI chat call asks the worker for its prompt first): give it a moment
            await self.retire(sv, ROUTED_GRACE_S if sv.runtime_name == "llm" else 0.0)
        log.info("model %s ready, versions %s", model.name, ",".join(sorted(loaded)))
        return model

    def _failed(self, name: str, model: ServedModel | None, reason: str) -> None:
        if model is None:
            model = self._models.setdefault(name, ServedModel(name, None))
        if not model.versions:  # a failed reload keeps serving the old versions
            model.state, model.reason = ModelState.UNAVAILABLE, reason
        else:
            model.reason = f"reload failed: {reason}"

    async def _load_version(
        self, spec: ModelSpec, version: str, source: ModelSource, budgeted: bool = True
    ) -> ServedVersion:
        if spec.ensemble is not None or spec.pipeline is not None:
            return self._composite_version(spec, version)  # no memory of its own: no budget
        if budgeted and self.budget is not None:
            sv = await self._dormant(spec, version, source)
            assert self.residency is not None
            try:
                await self.residency.activation(sv, counted=False)
            except BaseException:
                self.budget.forget(sv)
                raise
            return sv
        path = source.version_path(version)
        runtime_name = spec.runtime or detect_runtime(path)
        plan = ReplicaPlan(spec, version, path, runtime_name, self.isolation, self.metrics)
        return await self._start_version(spec, version, runtime_name, replica_maker(plan))

    async def _start_version(
        self, spec: ModelSpec, version: str, runtime_name: str, make: ReplicaMaker
    ) -> ServedVersion:
        """Start `spec.instances` replicas and work out the effective signature."""
        replicas, loaded, inputs, outputs = await start_replicas(spec, make)
        metrics = self.metrics.for_version(spec.name, version)
        stats = VersionStats()
        scheduler = self._scheduler(spec, version, replicas, make, stats, metrics)
        scheduler.start()
        return ServedVersion(
            name=spec.name,
            version=version,
            spec=spec,
            runtime_name=runtime_name,
            platform=spec.platform or loaded.platform,
            scheduler=scheduler,
            inputs=inputs,
            outputs=outputs,
            metrics=metrics,
            stats=stats,
        )

    def _composite_version(self, spec: ModelSpec, version: str) -> ServedVersion:
        """An ensemble or a pipeline: its declared signature, a scheduler that runs its
        steps."""
        metrics = self.metrics.for_version(spec.name, version)
        stats = VersionStats()
        label = f"{spec.name}-{version}"
        scheduler: CompositeScheduler
        if spec.ensemble is not None:
            kind = "ensemble"
            scheduler = EnsembleScheduler(spec, label, stats, metrics, lambda: self.steps)
        else:
            kind = "pipeline"
            scheduler = PipelineScheduler(spec, label, stats, metrics, lambda: self.steps,
                                          self._input_names, self.metrics.pipeline)  # fmt: skip
        return ServedVersion(
            name=spec.name,
            version=version,
            spec=spec,
            runtime_name=kind,
            platform=kind,
            scheduler=scheduler,
            inputs=spec.batched(spec.inputs),
            outputs=spec.batched(spec.outputs),
            metrics=metrics,
            stats=stats,
        )

    def _input_names(self, name: str, version: str | None) -> list[str] | None:
        """A served model's input names (a pipeline wires its steps by them); None when it
        is not served (the step's call then says so)."""
        try:
            sv = self.version(name, version)
        except InferdError:
            return None
        return [t.name for t in sv.inputs]

    def _scheduler(self, spec: ModelSpec, version: str, replicas: list[Replica],
                   make: ReplicaMaker, stats: VersionStats,
                   metrics: VersionMetrics) -> Scheduler:  # fmt: skip
        return Scheduler(spec, f"{spec.name}-{version}", replicas, make, stats, metrics,
                         self.health_interval_s, self.supervisor)  # fmt: skip

    # ---- the memory budget: versions known but not loaded ----------------------------------

    async def activate(self, sv: ServedVersion) -> None:
        """Load `sv` (not loaded: memory budget) for a request, which waits for it."""
        if self.residency is None:
            raise ModelNotReady(f"model '{sv.name}' version {sv.version} was unloaded")
        await self.residency.activate(sv)

    async def _dormant(self, spec: ModelSpec, version: str, source: ModelSource) -> ServedVersion:
        """A version that is known but not loaded: its signature as declared (the first load
        completes it), a scheduler with no replicas that was never started."""
        assert self.budget is not None
        path = source.version_path(version)
        runtime_name = spec.runtime or detect_runtime(path)
        plan = ReplicaPlan(spec, version, path, runtime_name, self.isolation, self.metrics)
        make = replica_maker(plan)
        metrics = self.metrics.for_version(spec.name, version)
        metrics_ready = self.metrics.model_ready.labels(spec.name, version)
        metrics_ready.set(0)
        stats = VersionStats()
        return ServedVersion(
            name=spec.name,
            version=version,
            spec=spec,
            runtime_name=runtime_name,
            platform=spec.platform or "",
            scheduler=self._scheduler(spec, version, [], make, stats, metrics),
            inputs=spec.batched(spec.inputs),
            outputs=spec.batched(spec.outputs),
            metrics=metrics,
            stats=stats,
            make=make,
            make_on=placed_replica_maker(plan),
            path=path,
            resident=False,
            clock=self.budget.clock,
            files_bytes=await asyncio.to_thread(files_bytes, path),
        )

    async def add_model(self, spec: ModelSpec, runtime: Runtime, version: str = "1") -> ServedModel:
        async with self._lock(spec.name):
            make = runtime_replicas(runtime, f"{spec.name}-{version}", spec.execution_timeout_s)
            sv = await self._start_version(replace(spec, instances=1), version, runtime.name, make)
            old = self._models.get(spec.name)
            if old is not None:
                for stale in old.versions.values():
                    await self.retire(stale)
            model = ServedModel(spec.name, spec, ModelState.READY, required=spec.required)
            model.versions = {version: sv}
            model.refresh_default()
            self._models[spec.name] = model
            self.metrics.model_ready.labels(spec.name, version).set(1)
            return model

    async def unload(self, name: str) -> None:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name)
        async with self._lock(name):
            versions, model.versions, model.default = model.versions, {}, None
            model.state, model.reason = ModelState.UNLOADING, ""
            for sv in versions.values():
                await self.retire(sv)
                self.metrics.forget(name, sv.version)
            # an operator's explicit unload takes the model out of the readiness set
            model.state, model.reason, model.required = ModelState.UNAVAILABLE, "unloaded", False

    async def retire(self, sv: ServedVersion, settle_s: float = 0.0) -> None:
        """Unload once in-flight requests (and generations) are done, bounded by the drain
        timeout; with `settle_s`, once it stayed idle that long too."""
        sv.retired = True
        await sv.idle(self.drain_timeout_s)
        if settle_s:
            await asyncio.sleep(settle_s)
            await sv.idle(self.drain_timeout_s)
        for pending in (sv.activation, sv.unloading):
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait([pending], timeout=self.drain_timeout_s)
        sv.resident = False
        await sv.scheduler.stop()
        if self.budget is not None:
            self.budget.forget(sv)

    # ---- queries ---------------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        return [self._models[n] for n in sorted(self._models)]

    def model(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    def version(self, name: str, version: str | None = None) -> ServedVersion:
        """The version to serve, or ModelNotFound / ModelNotReady with the reason."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name)
        if version is None or version == "":
            sv = model.default
            if sv is None:
                why = model.reason or model.state.value.lower()
                raise ModelNotReady(f"model '{name}' is not ready: {why}")
            return sv
        sv = model.versions.get(version)
        if sv is None:
            if model.state == ModelState.READY:
                raise ModelNotFound(name, version)
            raise ModelNotReady(f"model '{name}' version {version} is not ready")
        return sv
