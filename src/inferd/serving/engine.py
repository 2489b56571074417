"""The one inference engine every protocol adapter calls: a facade over the model manager
(`models.py`: lifecycle, versions), each version's scheduler (`scheduler.py`: queue + replica
set) and the accounting of every request (`infer_version`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelExecutionError,
    Overloaded,
    ReplicaFailed,
    ServerNotReady,
)
from inferd.core.spec import ModelSpec, version_key
from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor
from inferd.core.validation import check_inputs, check_outputs
from inferd.observability.metrics import ServingMetrics
from inferd.runtimes.base import Runtime
from inferd.serving.classification import classify
from inferd.serving.composite import StepRunner
from inferd.serving.memory import MemoryBudget
from inferd.serving.models import InFlight, ModelManager, ModelState, ServedModel, ServedVersion
from inferd.serving.repository import ModelRepository, ModelSource
from inferd.serving.response_cache import Lookup, ResponseCache
from inferd.serving.scheduler import Supervisor
from inferd.workers.isolation import WorkerIsolation

__all__ = ["InferenceEngine", "ModelState", "ServedModel", "ServedVersion", "request_timeout"]

log = logging.getLogger("inferd.engine")


class InferenceEngine(InFlight):
    """Owns served models; loads, unloads and runs them. Adapters make one call per request.

    `supervisor` heals and scales every version's replicas (`control/supervisor.py`
    `ReplicaSupervisor`); without one, a dead replica is not replaced and nothing autoscales.
    `response_cache` answers repeated requests to models whose spec enables it (None: off).
    `budget` (`memory.py`) bounds the memory of loaded models: they load on their first request
    and the least recently used idle ones are unloaded to make room (None: all load at start).
    """

    def __init__(
        self,
        metrics: ServingMetrics,
        repository: ModelRepository | None = None,
        health_interval_s: float = 5.0,
        drain_timeout_s: float = 30.0,
        isolation: WorkerIsolation | None = None,
        supervisor: Supervisor | None = None,
        response_cache: ResponseCache | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.metrics = metrics
        self.response_cache = response_cache
        self._manager = ModelManager(metrics, repository, isolation or WorkerIsolation(),
                                     health_interval_s, drain_timeout_s, supervisor,
                                     budget)  # fmt: skip
        self._manager.steps = self.run_step  # ensembles' steps, until the data plane routes them
        self._init_inflight()  # requests (and generations) running now, on every model
        self.started = False
        self.stopping = False

    @property
    def step_runner(self) -> StepRunner:
        """How ensembles run their steps (`serving/composite.py`)."""
        return self._manager.steps

    @step_runner.setter
    def step_runner(self, run: StepRunner) -> None:
        self._manager.steps = run

    async def run_step(
        self, name: str, version: str | None, request: InferenceRequest
    ) -> InferenceResponse:
        """One step of an ensemble, on the model's default version (no routing)."""
        return await self.infer_version(self.version(name, version), request)

    @property
    def repository(self) -> ModelRepository | None:
        return self._manager.repository

    @repository.setter
    def repository(self, repository: ModelRepository | None) -> None:
        self._manager.repository = repository

    @property
    def isolation(self) -> WorkerIsolation:
        """Who worker processes run as, what they see and whether they reach the network."""
        return self._manager.isolation

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model of the repository concurrently; failures are kept with reasons."""
        await self._manager.load_repository()
        self.started = True

    async def stop(self) -> None:
        self.stopping = True
        await self._manager.unload_all()
        self.isolation.close()
        if self.response_cache is not None:
            await self.response_cache.close()

    def begin_drain(self) -> None:
        """Stop taking new requests (readiness turns false); in-flight ones carry on."""
        self.stopping = True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (True) or `timeout_s` passed (False)."""
        return await self.idle(timeout_s)

    def live(self) -> bool:
        return not self.stopping

    def admit(self) -> None:
        """Refuse new work once draining began: every protocol's way in (infer, generate,
        embeddings, images, V1 predict, streams) passes here, so none can forget it."""
        if self.stopping:
            raise ServerNotReady("server is shutting down")

    def not_ready_reason(self) -> str | None:
        """None when ready: started, not stopping, and every required model READY."""
        if self.stopping:
            return "server is shutting down"
        if not self.started:
            return "server is starting: models are loading"
        waiting = self._manager.waiting()
        if waiting:
            return f"required model(s) not ready: {', '.join(sorted(waiting))}"
        return None

    # ---- model control ---------------------------------------------------------------------

    async def load(self, name: str, config: dict[str, Any] | None = None) -> ServedModel:
        """(Re)load a model from the repository. A failed reload keeps the old versions serving.

        `config` overrides `model.yaml` fields for this load (Triton's load-time config).
        """
        try:
            return await self._manager.load(name, config)
        finally:
            await self._forget_answers(name)

    async def load_source(self, source: ModelSource) -> ServedModel:
        """(Re)load a model from files outside the repository (a registry deployment).

        Same guarantees as `load`: a failed reload keeps the old versions serving.
        """
        try:
            return await self._manager.load_source(source)
        finally:
            await self._forget_answers(source.spec.name)

    async def forget(self, name: str) -> None:
        """Unload a model and stop reporting it at all (its deployment was deleted)."""
        await self._manager.forget(name)
        await self._forget_answers(name)

    async def probe(
        self, source: ModelSource, version: str, sample: InferenceRequest | None = None
    ) -> tuple[ServedVersion, InferenceResponse | str | None]:
        """Load one version in a throw-away worker process, optionally run one request, unload.

        Validates an imported artifact (a corrupt file fails here, not at deploy time) and reads
        the signature the model carries. Never touches served models or their metrics.
        Returns the response to `sample`, or why it failed (a string), or None without one.
        """
        return await self._manager.probe(source, version, sample, self.infer_version)

    async def add_model(self, spec: ModelSpec, runtime: Runtime, version: str = "1") -> ServedModel:
        """Serve an already-constructed runtime (the Python API's path): one thread replica."""
        return await self._manager.add_model(spec, runtime, version)

    async def unload(self, name: str) -> None:
        await self._manager.unload(name)
        await self._forget_answers(name)

    async def _forget_answers(self, name: str) -> None:
        # A reload may bring other files under the same version names: once it is done, this
        # node's cached answers of the model go (a shared store's expire after their time to
        # live).
        if self.response_cache is not None:
            await self.response_cache.forget(name)

    # ---- queries ---------------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        return self._manager.models()

    def model(self, name: str) -> ServedModel:
        return self._manager.model(name)

    def version(self, name: str, version: str | None = None) -> ServedVersion:
        """The version to serve, or ModelNotFound / ModelNotReady with the reason."""
        return self._manager.version(name, version)

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in self.models():
            if m.versions:
                for v in sorted(m.versions, key=version_key):
                    sv = m.versions[v]
                    h = sv.scheduler.health()
                    state, why = sv.state  # not READY only under a memory budget
                    if ready_only and state != "READY":
                        continue
                    reason = m.reason or why or h.last_error
                    replicas = {"total": h.total, "healthy": h.healthy, "restarts": h.restarts,
                                "queued": h.queued}  # fmt: skip
                    out.append({"name": m.name, "version": v, "state": state, "reason": reason,
                                "replicas": replicas})  # fmt: skip
            elif not ready_only:
                out.append(
                    {"name": m.name, "version": "", "state": m.state.value, "reason": m.reason}
                )
        return out

    def stats(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            return [
                sv.stats.to_dict(m.name, v)
                for m in self.models()
                for v, sv in sorted(m.versions.items())
            ]
        if version:
            sv = self.version(name, version)
            return [sv.stats.to_dict(name, sv.version)]
        model = self.model(name)
        return [sv.stats.to_dict(name, v) for v, sv in sorted(model.versions.items())]

    # ---- inference -------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, request: InferenceRequest
    ) -> InferenceResponse:
        """Run a decoded request on a model by name (the Python API's and the control plane's
        way in; the protocol adapters go through `api.dataplane.DataPlane`)."""
        self.admit()
        return await self.infer_version(self.version(name, version), request)

    def decode_failed(self, sv: ServedVersion, error: BaseException, elapsed_ns: int) -> None:
        """Count a request whose wire decoding failed against the version it was sent to."""
        sv.metrics.requests.inc()
        sv.stats.record_failure(elapsed_ns)
        sv.metrics.failure(_reason(error))

    async def infer_version(
        self, sv: ServedVersion, request: InferenceRequest, decode_ns: int = 0
    ) -> InferenceResponse:
        """Validate and run a decoded request; `decode_ns` is the time the adapter spent
        decoding it (reported in the version's input statistics and request latency)."""
        t0 = time.perf_counter_ns() - decode_ns
        m = sv.metrics
        m.requests.inc()
        m.pending.inc()
        sv.enter()
        self.enter()
        try:
            if not sv.resident:  # memory budget: not loaded yet, or unloaded to make room
                await self._manager.activate(sv)
            arrays = check_inputs(sv.name, request, sv.input_map, sv.spec.max_batch_size)
            wanted = check_outputs(sv.name, request.outputs, sv.output_map)
            rows = next(iter(arrays.values())).shape[0] if sv.spec.max_batch_size > 0 else 1
            if sv.spec.response_cache and self.response_cache is not None:
                # the one check the path without a cache pays; all else is in this branch
                cached = await self.response_cache.lookup(
                    sv.name, sv.version, arrays, sv.input_map, wanted, request.parameters
                )
                if cached is not None and cached.outputs is not None:
                    return self._cache_hit(sv, request, cached, wanted, t0)
                t1 = time.perf_counter_ns()
                timeout_s = request_timeout(request)
                result = await sv.scheduler.submit(
                    arrays,
                    wanted,
                    request.parameters,
                    rows,
                    timeout_s,
                    request.on_queued,
                    request.id,
                )
                t2 = time.perf_counter_ns()
                outputs = self._outputs(sv, result.outputs, wanted or sv.output_names, request)
                if cached is not None:
                    await self.response_cache.store_outputs(cached, sv.name, result.outputs)
                    sv.stats.record_cache_miss(cached.ns)
                    m.cache_misses.inc()
            else:
                t1 = time.perf_counter_ns()
                result = await sv.scheduler.submit(
                    arrays,
                    wanted,
                    request.parameters,
                    rows,
                    request_timeout(request),
                    request.on_queued,
                    request.id,
                )
                t2 = time.perf_counter_ns()
                outputs = self._outputs(sv, result.outputs, wanted or sv.output_names, request)
        except BaseException as e:
            total = time.perf_counter_ns() - t0
            sv.stats.record_failure(total)
            m.failure(_reason(e))
            raise
        finally:
            sv.leave()
            self.leave()
            m.pending.dec()
        t3 = time.perf_counter_ns()
        total = t3 - t0
        sv.stats.record_success(rows, total, result.queue_ns, t1 - t0, result.compute_ns, t3 - t2)
        m.success.inc()
        m.inferences.inc(rows)
        m.request_seconds.observe(total / 1e9)
        m.queue_seconds.observe(result.queue_ns / 1e9)
        m.compute_seconds.observe(result.compute_ns / 1e9)
        return InferenceResponse(sv.name, sv.version, outputs, request.id)

    def _cache_hit(
        self,
        sv: ServedVersion,
        request: InferenceRequest,
        cached: Lookup,
        wanted: list[str] | None,
        t0: int,
    ) -> InferenceResponse:
        """Answer from the response cache: a success, with neither inference nor execution
        counted (the model did not run)."""
        assert cached.outputs is not None
        outputs = self._outputs(sv, cached.outputs, wanted or sv.output_names, request)
        total = time.perf_counter_ns() - t0
        sv.stats.record_cache_hit(total, cached.ns)
        m = sv.metrics
        m.success.inc()
        m.cache_hits.inc()
        m.request_seconds.observe(total / 1e9)
        return InferenceResponse(sv.name, sv.version, outputs, request.id)

    def _outputs(
        self,
        sv: ServedVersion,
        produced: dict[str, np.ndarray],
        names: Sequence[str],
        request: InferenceRequest,
    ) -> list[Tensor]:
        params = {o.name: o.parameters for o in request.outputs or () if o.parameters}
        out = []
        for n in names:
            arr = produced.get(n)
            if arr is None:
                raise ModelExecutionError(f"model '{sv.name}' did not return output '{n}'")
            spec = sv.output_map[n]
            arr = np.asarray(arr)
            want = NUMPY_DTYPES[spec.datatype]
            if spec.datatype == "BYTES":
                if arr.dtype != want:
                    arr = _as_bytes_array(arr)
            elif arr.dtype != want:
                arr = arr.astype(want)
            k = (params.get(n) or {}).get("classification")
            if k is not None:
                out.append(classify(n, arr, k, sv.spec.labels))
            else:
                out.append(Tensor(n, spec.datatype, arr))
        return out


def _as_bytes_array(arr: np.ndarray) -> np.ndarray:
    flat = [x if isinstance(x, bytes) else str(x).encode() for x in arr.ravel().tolist()]
    res = np.empty(len(flat), dtype=object)
    res[:] = flat
    return res.reshape(arr.shape)


_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidInput, "invalid_input"),
    (ModelExecutionError, "model_error"),
    (Overloaded, "overloaded"),
    (DeadlineExceeded, "timeout"),
    (ReplicaFailed, "replica_failed"),
    (asyncio.CancelledError, "cancelled"),
)


def _reason(e: BaseException) -> str:
    for cls, reason in _REASONS:
        if isinstance(e, cls):
            return reason
    return "other"


def request_timeout(request: InferenceRequest) -> float | None:
    """Seconds the request may take: its own `timeout_s`, else Triton's `timeout` parameter (µs)."""
    if request.timeout_s is not None:
        return request.timeout_s
    raw = (request.parameters or {}).get("timeout")
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        raise InvalidInput("parameter 'timeout' must be a positive integer of microseconds")
    return raw / 1e6
