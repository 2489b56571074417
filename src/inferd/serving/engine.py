"""The one inference engine every protocol adapter calls."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import (
    DeadlineExceeded,
    InferdError,
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ReplicaFailed,
    ServerNotReady,
)
from inferd.core.spec import ModelSpec, TensorSpec, check_name, version_key
from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor
from inferd.core.validation import check_inputs, check_outputs
from inferd.observability.metrics import ServingMetrics, VersionMetrics
from inferd.runtimes import detect_runtime, runtime_class
from inferd.runtimes.base import Runtime
from inferd.serving.classification import classify
from inferd.serving.repository import ModelRepository, ModelSource
from inferd.serving.scheduler import ReplicaMaker, Scheduler
from inferd.serving.stats import VersionStats
from inferd.workers import InProcessReplica, Loaded, ProcessReplica, Replica
from inferd.workers.generation import ThreadGenerator, engine_factory
from inferd.workers.generation_process import ProcessGenerator
from inferd.workers.isolation import WorkerIsolation

log = logging.getLogger("inferd.engine")


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(eq=False)
class ServedVersion:
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
    inflight: int = 0

    def __post_init__(self) -> None:
        self.input_map = {t.name: t for t in self.inputs}
        self.output_map = {t.name: t for t in self.outputs}
        self.output_names = [t.name for t in self.outputs]


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

    def refresh_default(self) -> None:
        ordered = sorted(self.versions, key=version_key)
        self.default = self.versions[ordered[-1]] if ordered else None


class InferenceEngine:
    """Owns served models; loads, unloads and runs them. Adapters make one call per request."""

    def __init__(
        self,
        metrics: ServingMetrics,
        repository: ModelRepository | None = None,
        health_interval_s: float = 5.0,
        drain_timeout_s: float = 30.0,
        isolation: WorkerIsolation | None = None,
    ) -> None:
        self.metrics = metrics
        #: Who worker processes run as, what they see and whether they reach the network.
        self.isolation = isolation or WorkerIsolation()
        self.repository = repository
        self._health_interval_s = health_interval_s
        self.inflight = 0
        self._models: dict[str, ServedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._drain_timeout_s = drain_timeout_s
        self.started = False
        self.stopping = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model of the repository concurrently; failures are kept with reasons."""
        names = self.repository.names() if self.repository else []
        for name in names:
            self._models.setdefault(name, ServedModel(name, None))
        await asyncio.gather(*(self._load_quietly(n) for n in names))
        self.started = True

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.load(name)
        except InferdError as e:
            log.warning("model %s failed to load: %s", name, e.message)

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*(self.unload(n) for n in list(self._models)), return_exceptions=True)
        self.isolation.close()

    def begin_drain(self) -> None:
        """Stop taking new requests (readiness turns false); in-flight ones carry on."""
        self.stopping = True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.inflight == 0

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
        waiting = [m.name for m in self._models.values() if m.required and m.state != "READY"]
        if waiting:
            return f"required model(s) not ready: {', '.join(sorted(waiting))}"
        return None

    # ---- model control ---------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load(self, name: str, config: dict[str, Any] | None = None) -> ServedModel:
        """(Re)load a model from the repository. A failed reload keeps the old versions serving.

        `config` overrides `model.yaml` fields for this load (Triton's load-time config).
        """
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
        """(Re)load a model from files outside the repository (a registry deployment).

        Same guarantees as `load`: a failed reload keeps the old versions serving.
        """
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
        """Unload a model and stop reporting it at all (its deployment was deleted)."""
        if name in self._models:
            await self.unload(name)
            self._models.pop(name, None)

    async def probe(
        self, source: ModelSource, version: str, sample: InferenceRequest | None = None
    ) -> tuple[ServedVersion, InferenceResponse | str | None]:
        """Load one version in a throw-away worker process, optionally run one request, unload.

        Validates an imported artifact (a corrupt file fails here, not at deploy time) and reads
        the signature the model carries. Never touches served models or their metrics.
        Returns the response to `sample`, or why it failed (a string), or None without one.
        """
        name = f"probe-{uuid.uuid4().hex[:12]}"
        real = source.spec.name
        spec = replace(source.spec, name=name, instances=1, instance_kind="process",
                       autoscaling=None)  # fmt: skip
        try:
            sv = await self._load_version(spec, version, source)
        except InferdError as e:  # messages name the model, not the throw-away probe
            raise ModelLoadError(e.message.replace(name, real)) from None
        try:
            response: InferenceResponse | str | None = None
            if sample is not None:
                try:
                    response = await self.infer_version(sv, sample)
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
        results = await asyncio.gather(
            *(self._load_version(spec, v, source) for v in wanted), return_exceptions=True
        )
        loaded: dict[str, ServedVersion] = {}
        errors = []
        for v, r in zip(wanted, results, strict=True):
            if isinstance(r, ServedVersion):
                loaded[v] = r
            else:
                msg = r.message if isinstance(r, InferdError) else f"{type(r).__name__}: {r}"
                errors.append(f"version {v}: {msg}")
        if errors:
            for sv in loaded.values():
                await self._retire(sv)
            reason = "; ".join(errors)
            self.metrics.model_loads.labels(model.name, "failure").inc()
            self._failed(model.name, model, reason)
            raise ModelLoadError(f"failed to load '{model.name}': {reason}")
        old = model.versions
        model.spec, model.versions = spec, loaded
        model.refresh_default()
        model.state, model.reason = ModelState.READY, ""
        self.metrics.model_loads.labels(model.name, "success").inc()
        for sv in loaded.values():
            self.metrics.model_ready.labels(model.name, sv.version).set(1)
        for v, sv in old.items():
            if v not in loaded:
                self.metrics.forget(model.name, v)
            await self._retire(sv)
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
        self, spec: ModelSpec, version: str, source: ModelSource
    ) -> ServedVersion:
        path = source.version_path(version)
        runtime_name = spec.runtime or detect_runtime(path)
        label = f"{spec.name}-{version}"
        if runtime_name == "llm":  # continuous-batching generation (worker process or thread)
            make_engine = engine_factory(spec, path)

            def make(i: int) -> Replica:
                if spec.instance_kind == "thread":
                    return ThreadGenerator(make_engine, f"{label}-{i}")
                return ProcessGenerator(spec, version, path, f"{label}-{i}", index=i,
                                        isolation=self.isolation)  # fmt: skip

            return await self._start_version(spec, version, runtime_name, make)
        if spec.instance_kind == "thread":
            cls = runtime_class(runtime_name)

            def make(i: int) -> Replica:
                runtime = cls(spec, version, path)
                replica = InProcessReplica(runtime, f"{label}-{i}", spec.execution_timeout_s)
                replica.on_progress = progress
                return replica
        else:

            def make(i: int) -> Replica:
                replica = ProcessReplica(spec, version, path, runtime_name, f"{label}-{i}",
                                         index=i, isolation=self.isolation)  # fmt: skip
                replica.on_progress = progress
                return replica

        llm = self.metrics.llm
        steps = llm.image_steps.labels(spec.name, version)
        ratio = llm.progress.labels(spec.name, version)

        def progress(done: int, total: int) -> None:
            # one report per denoising step: the counter moves live, the ratio shows how far
            steps.inc()
            ratio.set(done / total if total else 0.0)

        return await self._start_version(spec, version, runtime_name, make)

    async def _start_version(
        self, spec: ModelSpec, version: str, runtime_name: str, make: ReplicaMaker
    ) -> ServedVersion:
        """Start `spec.instances` replicas and work out the effective signature."""
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
        metrics = self.metrics.for_version(spec.name, version)
        stats = VersionStats()
        scheduler = Scheduler.create(
            spec, f"{spec.name}-{version}", list(replicas), make, stats, metrics,
            self._health_interval_s,
        )  # fmt: skip
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

    async def add_model(self, spec: ModelSpec, runtime: Runtime, version: str = "1") -> ServedModel:
        """Serve an already-constructed runtime (the Python API's path): one thread replica."""
        async with self._lock(spec.name):
            label = f"{spec.name}-{version}"

            def make(i: int) -> Replica:
                return InProcessReplica(runtime, f"{label}-{i}", spec.execution_timeout_s)

            sv = await self._start_version(replace(spec, instances=1), version, runtime.name, make)
            old = self._models.get(spec.name)
            if old is not None:
                for stale in old.versions.values():
                    await self._retire(stale)
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
                await self._retire(sv)
                self.metrics.forget(name, sv.version)
            # an operator's explicit unload takes the model out of the readiness set
            model.state, model.reason, model.required = ModelState.UNAVAILABLE, "unloaded", False

    async def _retire(self, sv: ServedVersion) -> None:
        """Unload once in-flight requests are done (bounded by the drain timeout)."""
        deadline = time.monotonic() + self._drain_timeout_s
        while sv.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await sv.scheduler.stop()

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

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in self.models():
            if m.versions:
                for v in sorted(m.versions, key=version_key):
                    h = m.versions[v].scheduler.health()
                    reason = m.reason or h.last_error
                    replicas = {"total": h.total, "healthy": h.healthy, "restarts": h.restarts,
                                "queued": h.queued}  # fmt: skip
                    out.append({"name": m.name, "version": v, "state": "READY", "reason": reason,
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
        sv.inflight += 1
        self.inflight += 1
        try:
            arrays = check_inputs(sv.name, request, sv.input_map, sv.spec.max_batch_size)
            wanted = check_outputs(sv.name, request.outputs, sv.output_map)
            rows = next(iter(arrays.values())).shape[0] if sv.spec.max_batch_size > 0 else 1
            t1 = time.perf_counter_ns()
            result = await sv.scheduler.submit(
                arrays,
                wanted,
                request.parameters,
                rows,
                request_timeout(request),
                request.on_queued,
            )
            t2 = time.perf_counter_ns()
            outputs = self._outputs(sv, result.outputs, wanted or sv.output_names, request)
        except BaseException as e:
            total = time.perf_counter_ns() - t0
            sv.stats.record_failure(total)
            m.failure(_reason(e))
            raise
        finally:
            sv.inflight -= 1
            self.inflight -= 1
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
