"""The one composition root: builds every object from `Settings` and wires them together."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from inferd._version import __version__
from inferd.api.admin.app import management_app
from inferd.api.dataplane import DataPlane
from inferd.api.grpc import GrpcServer, Limits
from inferd.api.http.batch_plane import BatchPlane
from inferd.api.http.bodies import BodyRunner
from inferd.api.http.routes import data_plane_router
from inferd.api.http.server import DataPlaneApp, HttpLimits
from inferd.api.http.v2codec import decode_request, encode_response
from inferd.auth.limits import ConcurrencyLimiter, RateLimiter
from inferd.auth.principal import Principal
from inferd.control.abtest import ABTests
from inferd.control.audit import Audit
from inferd.control.batches import Batches
from inferd.control.catalog import Catalog, SampleCodec
from inferd.control.deployments import Deployments
from inferd.control.gate import Gate
from inferd.control.identity import Identity
from inferd.control.jobs import Jobs
from inferd.control.pipelines import Pipelines
from inferd.control.plane import ControlPlane
from inferd.control.rollouts import Rollouts
from inferd.control.supervisor import ReplicaSupervisor
from inferd.control.webhooks import Webhooks
from inferd.core.records import Job
from inferd.core.routing import Routes
from inferd.core.tensors import InferenceRequest, InferenceResponse
from inferd.observability.batches import BatchMetrics
from inferd.observability.metrics import ServingMetrics
from inferd.observability.routing import RoutingMetrics
from inferd.registry.artifacts import open_store
from inferd.registry.db import Database, sqlite_url
from inferd.registry.store import RegistryStore
from inferd.serving.engine import InferenceEngine
from inferd.serving.generation import Generation
from inferd.serving.gpus import Gpus
from inferd.serving.gpus import detect as gpus_found
from inferd.serving.memory import MemoryBudget
from inferd.serving.objects import add_objects
from inferd.serving.repository import ModelRepository
from inferd.serving.response_cache import MemoryStore, ResponseCache, open_response_cache
from inferd.settings import Settings
from inferd.workers.isolation import WorkerIsolation


@dataclass
class Server:
    """Everything a running inferd process is made of."""

    settings: Settings
    engine: InferenceEngine
    metrics: ServingMetrics
    asgi: DataPlaneApp
    control: ControlPlane
    grpc: GrpcServer | None = None


def _decode_sample(doc: dict[str, Any]) -> InferenceRequest:
    return decode_request(orjson.dumps(doc), None)


def _encode_sample(response: InferenceResponse, request: InferenceRequest) -> dict[str, Any]:
    body, _ = encode_response(response, request)
    doc: dict[str, Any] = orjson.loads(body)
    return doc


async def _run_job(runner: BodyRunner, job: Job, p: Principal,
                   progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:  # fmt: skip
    """An async prediction's request, run as the same synchronous call would be (routed,
    guarded, queued and batched), its response as that call's JSON body."""
    return await runner.run(job.api, p, job.model, job.version, job.input, job.id, progress)


def build(settings: Settings, models: Mapping[str, Any] | None = None) -> Server:
    """Build the engine, metrics and HTTP app from settings (no I/O until startup).

    `models` maps names to in-memory model objects to serve besides the repository's.
    """
    metrics = ServingMetrics(CollectorRegistry(auto_describe=True))
    w = settings.workers
    repository = (
        ModelRepository(settings.model_repository, network=w.repository_network)
        if settings.model_repository
        else None
    )
    # the supervisor's loops (healing, health checks, autoscaling) start with each version the
    # engine loads and stop with it
    engine = InferenceEngine(metrics, repository, drain_timeout_s=settings.shutdown_grace_s,
                             isolation=_worker_isolation(settings),
                             supervisor=ReplicaSupervisor(),
                             response_cache=_response_cache(settings, metrics),
                             budget=_memory_budget(settings, metrics))  # fmt: skip
    routes_in_force = Routes()  # deployments' routing policies: set by the control plane
    control = _control_plane(settings, engine, SampleCodec(_decode_sample, _encode_sample),
                             routes_in_force)  # fmt: skip
    http = settings.http
    g = settings.grpc
    plane = DataPlane(engine, Generation(engine, metrics.llm), control.gate,
                      routes=routes_in_force, metrics=RoutingMetrics(metrics.registry))  # fmt: skip
    engine.step_runner = plane.run_step  # ensembles' steps are routed like requests
    # async predictions: as a sync call of the same body runs
    control.jobs.execute = partial(_run_job, BodyRunner(plane))
    plane.jobs = control.jobs  # and `Prefer: respond-async` queues them
    control.batches.rows = BatchPlane(plane)  # batch rows: each as its sync call runs
    grpc = None
    if g.enabled:
        grpc = GrpcServer(plane, g.host, g.port, g.max_message_bytes, http.server_name,
                          __version__, g.transport, Limits.of(g))  # fmt: skip
    limits = HttpLimits(max_body_bytes=http.max_body_bytes)
    routes = data_plane_router(plane, metrics, limits, http.server_name, __version__)
    asgi = DataPlaneApp(
        plane,
        metrics,
        fallback=management_app(control, __version__, plane, routes),
        limits=limits,
        on_startup=partial(_start, engine, control, models or {}, grpc),
        on_shutdown=partial(_stop, engine, control, grpc, settings.shutdown_grace_s),
    )
    return Server(settings, engine, metrics, asgi, control, grpc)


def _worker_isolation(settings: Settings) -> WorkerIsolation:
    """Workers see nothing of the data dir (the database, every user's models) nor of a local
    artifact store, apart from the model folder each one serves."""
    w = settings.workers
    hide = [Path(settings.data_dir).expanduser()]
    store = settings.registry.artifact_store
    if store and not store.startswith("s3://"):
        hide.append(Path(store.removeprefix("file://")))
    return WorkerIsolation(w.user, w.require_network_isolation, w.env_allow, w.scratch_dir, hide)


def _memory_budget(settings: Settings, metrics: ServingMetrics) -> MemoryBudget | None:
    """The memory budget of the loaded models, host and per GPU (None: every model loads at
    start and stays)."""
    s = settings.serving
    gpus = None
    if s.gpu_memory_budget is not None:
        gpus = Gpus.from_settings(s.gpu_memory_budget, s.gpus, gpus_found())
    if s.memory_budget_bytes is None and gpus is None:
        return None
    return MemoryBudget(s.memory_budget_bytes, metrics.memory, s.load_wait_s, gpus=gpus)


def _response_cache(settings: Settings, metrics: ServingMetrics) -> ResponseCache | None:
    """One response cache per server (None: off); only models that opt in use it."""
    c = settings.response_cache
    cache = open_response_cache(c.backend, c.max_bytes, c.max_entry_bytes,
                                c.redis_url or settings.redis_url, settings.redis_prefix,
                                c.ttl_s)  # fmt: skip
    if cache is not None and isinstance(cache.store, MemoryStore):
        metrics.response_cache_bytes.set_function(partial(getattr, cache.store, "used"))
    return cache


async def _start(
    engine: InferenceEngine,
    control: ControlPlane,
    models: Mapping[str, Any],
    grpc: GrpcServer | None,
) -> None:
    # gRPC binds first: a busy port fails fast, and probes see NOT_SERVING while models load.
    if grpc is not None:
        await grpc.start()
    try:
        await engine.start()
        await add_objects(engine, models)
        await control.start()
    except BaseException:
        if grpc is not None:
            await grpc.stop(0)
        await control.stop()
        raise


async def _stop(
    engine: InferenceEngine, control: ControlPlane, grpc: GrpcServer | None, grace_s: float
) -> None:
    if grpc is not None:
        await grpc.stop(grace_s)
    await control.stop()
    await engine.stop()


def _control_plane(
    settings: Settings, engine: InferenceEngine, codec: SampleCodec, routes: Routes
) -> ControlPlane:
    data_dir = Path(settings.data_dir).expanduser()
    # the database (JWT key, password hashes), every user's artifacts: the server's alone
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    reg = settings.registry
    db = Database(reg.database_url or sqlite_url(data_dir / "inferd.db"))
    store = RegistryStore(db)
    secret = reg.s3_secret_key.get_secret_value() if reg.s3_secret_key else None
    access = reg.s3_access_key.get_secret_value() if reg.s3_access_key else None
    artifacts = open_store(
        reg.artifact_store or str(data_dir / "artifacts"),
        endpoint_url=reg.s3_endpoint_url,
        region=reg.s3_region,
        access_key=access,
        secret_key=secret,
    )
    lim = settings.limits
    prefix = settings.redis_prefix
    rate = RateLimiter(settings.redis_url, prefix, fail_open=lim.redis_fail_open)
    concurrency = ConcurrencyLimiter(settings.redis_url, prefix, fail_open=lim.redis_fail_open)
    audit = Audit(store)
    identity = Identity(store, audit, settings.auth, lim, rate)
    catalog = Catalog(store, artifacts, audit, engine, codec, reg, lim, data_dir,
                      settings.auth.anonymous_inference)  # fmt: skip
    deployments = Deployments(store, catalog, audit, engine, reg.reconcile_interval_s, routes)
    gate = Gate(identity, catalog, rate, concurrency, settings.auth, lim)
    rollouts, abtests = Rollouts(deployments, audit), ABTests(deployments)
    jobs = Jobs(store, catalog, audit, settings.jobs, engine.metrics.jobs, artifacts)
    webhooks = Webhooks(store, audit, settings.webhooks, engine.metrics.webhooks)
    jobs.webhooks = webhooks  # a job's webhook URL is checked at submission, its events sent
    batches = Batches(store, catalog, audit, artifacts, settings.batches,
                      BatchMetrics(engine.metrics.registry))  # fmt: skip
    return ControlPlane(db, store, artifacts, audit, identity, catalog, deployments, gate, rate,
                        concurrency, rollouts, abtests, Pipelines(catalog), jobs,
                        webhooks, batches)  # fmt: skip
