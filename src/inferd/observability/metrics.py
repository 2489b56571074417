"""Prometheus metrics on an injected registry (never the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

#: Latency buckets in seconds: sub-millisecond resolution for fast models, up to a minute.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Values of the `reason` label of inferd_inference_failures_total.
FAILURE_REASONS = (
    "invalid_input",
    "model_error",
    "overloaded",
    "timeout",
    "replica_failed",
    "cancelled",
    "other",
)


@dataclass(slots=True)
class VersionMetrics:
    """Children bound to one (model, version) so the hot path does no label lookups."""

    requests: Counter
    success: Counter
    inferences: Counter
    executions: Counter
    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
    restarts: Counter
    replicas_healthy: Gauge
    pending: Gauge
    cache_hits: Counter
    cache_misses: Counter
    _failures: Counter
    _model: str
    _version: str

    def failure(self, reason: str) -> None:
        self._failures.labels(self._model, self._version, reason).inc()


class ServingMetrics:
    """Data-plane metrics: `inferd_inference_*` with labels {model, version}."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.llm = LLMMetrics(registry)
        self.memory = MemoryMetrics(registry)
        self.pipeline = PipelineMetrics(registry)
        self.jobs = JobMetrics(registry)
        self.webhooks = WebhookMetrics(registry)
        mv = ["model", "version"]
        self.requests = Counter(
            "inferd_inference_requests", "Inference requests received", mv, registry=registry
        )
        self.success = Counter(
            "inferd_inference_success", "Inference requests that succeeded", mv, registry=registry
        )
        self.failures = Counter(
            "inferd_inference_failures",
            "Inference requests that failed, by reason",
            [*mv, "reason"],
            registry=registry,
        )
        self.inferences = Counter(
            "inferd_inference_count",
            "Inferences performed (a batch of n counts n)",
            mv,
            registry=registry,
        )
        self.executions = Counter(
            "inferd_inference_executions",
            "Model executions (a batch counts once)",
            mv,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "inferd_inference_request_duration_seconds",
            "End-to-end inference request duration in the engine",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "inferd_inference_queue_duration_seconds",
            "Time a request waited before its model ran",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_seconds = Histogram(
            "inferd_inference_compute_duration_seconds",
            "Time the model spent computing",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "inferd_inference_batch_size",
            "Batch size of each model execution",
            mv,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.replica_restarts = Counter(
            "inferd_replica_restarts",
            "Replicas replaced after dying, hanging or failing health checks",
            mv,
            registry=registry,
        )
        self.replicas_healthy = Gauge(
            "inferd_replicas_healthy", "Replicas currently healthy", mv, registry=registry
        )
        self.queue_size = Gauge(
            "inferd_inference_pending_requests",
            "Requests queued or running, per model version",
            mv,
            registry=registry,
        )
        self.model_ready = Gauge(
            "inferd_model_ready", "1 when the model version is ready", mv, registry=registry
        )
        self.model_loads = Counter(
            "inferd_model_loads",
            "Model load attempts by outcome",
            ["model", "outcome"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "inferd_response_cache_hits",
            "Requests answered from the response cache (the model did not run)",
            mv,
            registry=registry,
        )
        self.cache_misses = Counter(
            "inferd_response_cache_misses",
            "Requests to a model with the response cache on that were not in it",
            mv,
            registry=registry,
        )
        self.response_cache_bytes = Gauge(
            "inferd_response_cache_bytes",
            "Bytes held by this server's in-memory response cache",
            registry=registry,
        )
        self.http_requests = Counter(
            "inferd_http_requests",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=registry,
        )

    def for_version(self, model: str, version: str) -> VersionMetrics:
        labels = (model, version)
        return VersionMetrics(
            requests=self.requests.labels(*labels),
            success=self.success.labels(*labels),
            inferences=self.inferences.labels(*labels),
            executions=self.executions.labels(*labels),
            request_seconds=self.request_seconds.labels(*labels),
            queue_seconds=self.queue_seconds.labels(*labels),
            compute_seconds=self.compute_seconds.labels(*labels),
            batch_size=self.batch_size.labels(*labels),
            restarts=self.replica_restarts.labels(*labels),
            replicas_healthy=self.replicas_healthy.labels(*labels),
            pending=self.queue_size.labels(*labels),
            cache_hits=self.cache_hits.labels(*labels),
            cache_misses=self.cache_misses.labels(*labels),
            _failures=self.failures,
            _model=model,
            _version=version,
        )

    def forget(self, model: str, version: str) -> None:
        """Drop a version's series once it is unloaded."""
        for metric in (
            self.requests, self.success, self.inferences, self.executions,
            self.request_seconds, self.queue_seconds, self.compute_seconds, self.batch_size,
            self.model_ready, self.replica_restarts, self.replicas_healthy, self.queue_size,
            self.cache_hits, self.cache_misses,
        ):  # fmt: skip
            try:
                metric.remove(model, version)
            except KeyError:
                pass
        for reason in FAILURE_REASONS:
            try:
                self.failures.remove(model, version, reason)
            except KeyError:
                pass

    def render(self, shown: Callable[[str], bool] | None = None) -> bytes:
        """The text exposition; with `shown`, only the series whose `model` label it accepts
        (series without that label are always kept)."""
        if shown is None:
            return generate_latest(self.registry)
        return generate_latest(_ModelFilter(self.registry, shown))


class _ModelFilter:
    """A read-only view of a registry without the series of models the caller may not see;
    `generate_latest` renders it like the registry itself."""

    def __init__(self, registry: CollectorRegistry, shown: Callable[[str], bool]) -> None:
        self.registry = registry
        self.shown = shown

    def collect(self) -> Iterator[Metric]:
        decided: dict[str, bool] = {}  # one decision per model name, not per sample

        def keep(model: str | None) -> bool:
            if model is None:
                return True
            ok = decided.get(model)
            if ok is None:
                ok = decided[model] = self.shown(model)
            return ok

        for family in self.registry.collect():
            samples = [s for s in family.samples if keep(s.labels.get("model"))]
            if len(samples) == len(family.samples):
                yield family
                continue
            # A copy: the family may be the registry's own object for custom collectors.
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = samples
            yield kept


class JobMetrics:
    """Async predictions (`control/jobs.py`), as this server sees them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.submitted = Counter("inferd_jobs_submitted", "Async predictions queued",
                                 registry=registry)  # fmt: skip
        self.finished = Counter("inferd_jobs_finished",
                                "Async predictions that ended here, by how they ended",
                                ["status"], registry=registry)  # fmt: skip
        self.running = Gauge("inferd_jobs_running", "Async predictions running on this server",
                             registry=registry)  # fmt: skip
        self.by_status = Gauge("inferd_jobs", "Async predictions in the database by status "
                               "(every node's; as of the last sweep, every few seconds): "
                               "`queued` is the queue depth", ["status"],
                               registry=registry)  # fmt: skip
        buckets = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600)
        self.wait = Histogram("inferd_job_queue_wait_seconds",
                              "Time from an async prediction's submission to its start",
                              registry=registry, buckets=buckets)  # fmt: skip


class WebhookMetrics:
    """Webhook deliveries of async predictions (`control/webhooks.py`) sent by this server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter("inferd_webhook_deliveries",
                                  "Webhook delivery attempts by outcome: delivered (2xx), retry "
                                  "(to be tried again), failed (out of attempts)",
                                  ["outcome"], registry=registry)  # fmt: skip
        buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.seconds = Histogram("inferd_webhook_send_seconds",
                                 "Time of one webhook delivery attempt (resolve, connect, send, "
                                 "the answer's head)", registry=registry,
                                 buckets=buckets)  # fmt: skip


class PipelineMetrics:
    """Inference graphs (`serving/pipeline.py`): each step's time, failures and fallbacks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram("inferd_pipeline_step_seconds",
                                 "Time of one pipeline step (model call, node or processor)",
                                 ["model", "step"], registry=registry)  # fmt: skip
        self.failures = Counter("inferd_pipeline_step_failures",
                                "Pipeline steps that failed", ["model", "step"],
                                registry=registry)  # fmt: skip
        self.fallbacks = Counter("inferd_pipeline_fallbacks",
                                 "Failed pipeline steps answered by their fallback",
                                 ["model", "step"], registry=registry)  # fmt: skip


class MemoryMetrics:
    """The memory budget (`serving/memory.py`): models loaded, bytes held against the budget,
    evictions; loads are `inferd_model_loads_total`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.loaded = Gauge("inferd_models_loaded",
                            "Model versions loaded now under the memory budget",
                            registry=registry)  # fmt: skip
        self.used = Gauge("inferd_memory_used_bytes",
                          "Bytes the loaded (and loading) models hold, as the budget counts them",
                          registry=registry)  # fmt: skip
        self.budget = Gauge("inferd_memory_budget_bytes",
                            "The server's memory budget for loaded models",
                            registry=registry)  # fmt: skip
        self.model_bytes = Gauge("inferd_model_memory_bytes",
                                 "Bytes one loaded model version holds, as the budget counts them",
                                 ["model", "version"], registry=registry)  # fmt: skip
        self.evictions = Counter("inferd_model_evictions",
                                 "Models unloaded to make room within the memory budget",
                                 ["model"], registry=registry)  # fmt: skip
        self.refusals = Counter("inferd_model_budget_refusals",
                                "Loads refused because the model cannot fit in the memory budget "
                                "(503)", ["model"], registry=registry)  # fmt: skip
        self.gpu_budget = Gauge("inferd_gpu_memory_budget_bytes",
                                "The per-GPU memory budget of each GPU models are placed on",
                                ["gpu"], registry=registry)  # fmt: skip
        self.gpu_used = Gauge("inferd_gpu_memory_used_bytes",
                              "Bytes the loaded (and loading) models hold on each GPU, as the "
                              "per-GPU budget counts them", ["gpu"], registry=registry)  # fmt: skip
        self.gpu_models = Gauge("inferd_gpu_models_loaded",
                                "Model versions loaded (or loading) on each GPU",
                                ["gpu"], registry=registry)  # fmt: skip


#: vLLM's bucket lists (seconds), so dashboards built for it read these the same way.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class LLMMetrics:
    """Generation metrics in the vLLM style: `inferd_llm_*` with labels {model, version}."""

    def __init__(self, registry: CollectorRegistry) -> None:
        mv = ["model", "version"]
        self.ttft = Histogram("inferd_llm_time_to_first_token_seconds",
                              "Time from request to its first generated token", mv,
                              buckets=TTFT_BUCKETS, registry=registry)  # fmt: skip
        self.itl = Histogram("inferd_llm_inter_token_latency_seconds",
                             "Time between two generated tokens of a request", mv,
                             buckets=ITL_BUCKETS, registry=registry)  # fmt: skip
        self.e2e = Histogram("inferd_llm_e2e_request_latency_seconds",
                             "Time from request to its last token", mv, buckets=E2E_BUCKETS,
                             registry=registry)  # fmt: skip
        self.prompt_tokens = Counter("inferd_llm_prompt_tokens", "Prompt tokens processed", mv,
                                     registry=registry)  # fmt: skip
        self.generation_tokens = Counter("inferd_llm_generation_tokens", "Tokens generated", mv,
                                         registry=registry)  # fmt: skip
        self.finished = Counter("inferd_llm_requests_finished",
                                "Generation requests finished, by finish reason",
                                [*mv, "finish_reason"], registry=registry)  # fmt: skip
        self.running = Gauge("inferd_llm_requests_running", "Sequences in the running batch", mv,
                             registry=registry)  # fmt: skip
        self.waiting = Gauge("inferd_llm_requests_waiting", "Requests waiting to join the batch",
                             mv, registry=registry)  # fmt: skip
        self.kv_cache_usage = Gauge("inferd_llm_kv_cache_usage_ratio",
                                    "Share of the KV cache capacity in use (0-1)", mv,
                                    registry=registry)  # fmt: skip
        self.image_steps = Counter("inferd_image_generation_steps",
                                   "Denoising steps run by image generation models", mv,
                                   registry=registry)  # fmt: skip
        self.progress = Gauge("inferd_generation_progress_ratio",
                              "Progress (0-1) of the latest long-running request, e.g. the "
                              "denoising steps of an image", mv, registry=registry)  # fmt: skip
