"""Control-plane records (users, keys, models, versions, deployments, audit) as plain frozen types.

The registry stores them and returns these, never ORM rows; auth policies and the API read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from inferd.core.routing import NO_ROUTING, RoutingPolicy
from inferd.core.traffic import TOTAL, Revision


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class Scope(StrEnum):
    """What an API key may do: `infer` calls models, `manage` changes them, `admin` all."""

    INFER = "infer"
    MANAGE = "manage"
    ADMIN = "admin"


class Visibility(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class VersionStatus(StrEnum):
    IMPORTING = "importing"
    READY = "ready"
    FAILED = "failed"


class DeploymentStatus(StrEnum):
    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: A job in one of these never changes again.
JOB_DONE = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Job:
    """An async prediction: a request body for a model, run by the server when it can; the
    result (or the error) is kept for its owner."""

    id: str
    owner_id: str
    model: str
    version: str | None
    #: The request body as the caller sent it, in the dialect `api` names.
    input: dict[str, Any]
    status: JobStatus
    created_at: datetime
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 3
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str = ""
    idempotency_key: str | None = None
    #: Cancel asked while it ran: the node running it aborts it.
    cancel_requested: bool = False
    #: The dialect of `input` (`inferd.core.bodies.APIS`): V2, V1 or an OpenAI request.
    api: str = "v2"
    #: Where its events are POSTed (Standard Webhooks), if anywhere.
    webhook: str | None = None
    #: Which of its events go there (`started`, `progress`, `completed`); None: `completed`.
    webhook_events: tuple[str, ...] | None = None
    #: The node running it, and until when (a node that stops renewing loses it).
    node: str | None = None
    lease_until: datetime | None = None
    #: What the runtime reported so far (steps, tokens), when it does.
    progress: dict[str, Any] | None = None
    #: The artifact-store key of a result kept outside the database (too large for a row).
    result_ref: str | None = None


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event of a job POSTed to its webhook; `id` is the Standard Webhooks `webhook-id`,
    the same on every retry."""

    id: str
    job_id: str
    owner_id: str
    event: str
    url: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    last_code: int | None
    last_error: str
    next_at: datetime
    created_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class User:
    """An account. `trusted` lets the user's models use code-executing formats (admin-set)."""

    id: str
    username: str
    role: Role
    created_at: datetime
    trusted: bool = False
    disabled: bool = False
    #: Per-user quotas; None means the server default.
    rpm_limit: int | None = None
    concurrency_limit: int | None = None
    storage_quota_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's public record. The secret is shown once at creation and stored hashed."""

    id: str
    user_id: str
    name: str
    #: The recognisable, non-secret start of the key (e.g. `inferd_ab12cd34`), used for lookup.
    prefix: str
    scopes: frozenset[Scope]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    rpm_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Model:
    """A registered model. `name` is unique and is the name the data plane serves it under."""

    id: str
    name: str
    owner_id: str
    visibility: Visibility
    created_at: datetime
    updated_at: datetime
    description: str = ""
    framework: str = ""
    model_type: str = ""
    task_type: str = ""
    tags: tuple[str, ...] = ()
    #: Models from a `--model-repository` folder: public, owned by the system, read-only here.
    system: bool = False


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable artifact of a model, numbered 1, 2, … per model."""

    id: str
    model_id: str
    version: int
    status: VersionStatus
    created_at: datetime
    reason: str = ""
    #: Key of the artifact in the artifact store ("" while importing).
    artifact_key: str = ""
    #: Detected format: onnx, skops, pickle, xgboost, lightgbm, torchscript, torch_export, …
    artifact_format: str = ""
    #: The runtime it was validated with (onnx, sklearn, llm, transformers, ...).
    runtime: str = ""
    sha256: str = ""
    size_bytes: int = 0
    #: Where it came from: "upload:<filename>", "url:<url>", "repository:<path>".
    source: str = ""
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()
    #: A V2 inference request body and the response expected for it (the "test" call).
    sample_input: dict[str, Any] | None = None
    sample_output: dict[str, Any] | None = None
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """How a deployed version runs. Maps onto `model.yaml` fields for the data plane."""

    runtime: str | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    target_concurrency: int = 4
    #: Idle seconds before scaling to zero replicas (None: never).
    scale_to_zero_after_s: float | None = None
    #: max_batch_size + `dynamic_batching` as in model.yaml (max_queue_delay, preferred sizes).
    batching: dict[str, Any] = field(default_factory=dict)
    #: cpu (cores), memory (bytes), gpu (count).
    resources: dict[str, Any] = field(default_factory=dict)
    #: Runtime parameters (model.yaml `parameters`).
    parameters: dict[str, Any] = field(default_factory=dict)
    instance_kind: str = "process"
    #: Answer identical requests from the server's response cache (model.yaml
    #: `response_cache: {enable: true}`); only for models whose answer depends on the request alone.
    response_cache: bool = False


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model version the data plane should serve. One deployment per model."""

    id: str
    model_id: str
    version: int
    config: DeploymentConfig
    status: DeploymentStatus
    created_at: datetime
    updated_at: datetime
    reason: str = ""
    created_by: str | None = None
    #: Bumped on every change; the reconciler records the generation it last applied.
    generation: int = 1
    observed_generation: int = 0
    #: The revisions and their traffic shares; empty: `version` takes all of it.
    traffic: tuple[Revision, ...] = ()
    #: Header rules, fallbacks and a circuit breaker (`core.routing`); empty: none.
    routing: RoutingPolicy = NO_ROUTING

    def revisions(self) -> tuple[Revision, ...]:
        """Every deployed revision with its weight (`version` alone at 100 without a split)."""
        return self.traffic or (Revision(self.version, TOTAL),)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One management action: who, what, on which object, when, from where, and the outcome."""

    id: str
    at: datetime
    actor_id: str | None
    actor_name: str
    action: str
    target_type: str
    target_id: str
    outcome: str = "ok"
    ip: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class BatchStatus(StrEnum):
    """A batch job's state, by OpenAI's names (`/v1/batches` shows them as they are)."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


#: A batch job in one of these never changes again.
BATCH_DONE = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED}
)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file a user uploaded (`/v1/files`) or a batch job wrote; its bytes are in the artifact
    store under `key`."""

    id: str
    owner_id: str
    purpose: str
    filename: str
    bytes: int
    key: str
    created_at: datetime
    #: 0: one object at `key`; n > 0: the objects `key/000000.jsonl` ... in order (a batch
    #: job's output, stored chunk by chunk).
    parts: int = 0
    #: The batch job that wrote it (an output or error file); None for an upload.
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A file of requests run row by row, in chunks of `chunk_rows` rows: chunk `committed`
    is the next one to run (the ones before it have their output stored)."""

    id: str
    owner_id: str
    model: str
    #: How its rows are run (`inferd.core.bodies.APIS`; tabular rows are V2 requests).
    api: str
    #: The OpenAI route of its rows (`/v1/embeddings` ...) or "" for inferd's own batch jobs.
    endpoint: str
    input_file_id: str
    #: `jsonl`, `csv` or `parquet`.
    format: str
    status: BatchStatus
    total: int
    done: int
    failed: int
    chunk_rows: int
    chunks: int
    committed: int
    created_at: datetime
    version: str | None = None
    #: Bytes of the recorded chunks' output: every line (inferd's jobs) or the successes
    #: (OpenAI's), and the failures (OpenAI's).
    output_bytes: int = 0
    error_bytes: int = 0
    #: Created through `/v1/batches` (its output file holds the successes, the error file the
    #: failures) or `/api/v1/batch-jobs` (one output file, one line per input line).
    openai: bool = False
    completion_window: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    node: str | None = None
    lease_until: datetime | None = None
    #: The current run's start and the rows done before it (throughput and ETA).
    run_started_at: datetime | None = None
    run_start_done: int = 0
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
    expires_at: datetime | None = None
    expired_at: datetime | None = None
    #: Why the whole job failed (a row's error is in its output line).
    error: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
